"""irm.training."""
