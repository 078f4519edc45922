"""The OpenSearch output (self-hosted, Amazon OpenSearch Service, Serverless): the shared ``_bulk`` delivery."""
