"""irm.evaluation."""
