"""The forward source: Fluentd Forward Protocol v1 over TCP, as td-agent's ``in_forward``.

``codec`` turns msgpack messages into records, ``handshake`` does HELO/PING/PONG,
``chunks`` remembers which chunk ids were committed, ``source`` serves the connections.
"""
