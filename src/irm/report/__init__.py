"""irm.report."""
