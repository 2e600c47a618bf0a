"""irm.core."""
