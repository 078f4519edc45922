"""The tail source: follow files matching globs, through rotation, truncation and restarts."""
