"""irm.hosts."""
