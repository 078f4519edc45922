"""Transforms: turn a block of lines into enriched records grouped by time key, in one loop."""
