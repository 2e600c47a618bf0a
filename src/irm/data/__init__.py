"""irm.data."""
