"""The Elasticsearch output: bulk indexing with exactly-once results."""
