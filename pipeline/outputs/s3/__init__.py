"""The S3 output: one date-partitioned object per chunk."""
