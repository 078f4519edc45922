"""What the outputs speaking the ``_bulk`` API share (Elasticsearch, OpenSearch).

``config.py`` holds the keys both have; ``delivery.py`` the delivery itself (batches,
per-document outcomes, resends, splits, dead letters, template at start). The wire format
(:mod:`~pipeline.outputs.elasticsearch.encoder`, ``classify``, ``template``) stays where it
was written, in the Elasticsearch output, and is imported from there: OpenSearch speaks it too.
"""
