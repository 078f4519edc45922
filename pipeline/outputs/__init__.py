"""Outputs: deliver queued chunks somewhere. Each has a config, an Output and a flusher loop."""
