"""The file output: JSON Lines on local disk."""
