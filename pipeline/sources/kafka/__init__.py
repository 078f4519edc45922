"""The kafka source: consume a topic in a consumer group, exactly once into the buffers."""
