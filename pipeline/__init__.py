"""logferry: ship AI agents' interaction logs through durable buffers to Elasticsearch, S3 and files."""

__version__ = "0.1.0"

__all__ = ["__version__"]
