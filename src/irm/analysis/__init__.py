"""irm.analysis."""
