"""Runtime: build the pipeline from settings, run it, stop it in order."""
