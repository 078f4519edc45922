"""Every error logferry raises on purpose, in one hierarchy.

::

    LogferryError
    ├── ConfigError                 bad or unreadable configuration; names the key path
    ├── StateError                  the state directory cannot be used (permissions, corrupt beyond salvage)
    ├── BufferOverflowError         an output's buffer is full and its overflow action cannot make room
    └── DeliveryError               an output could not deliver a chunk
        ├── RetryableError          try again later with backoff (network, 5xx, 429, timeouts)
        └── UnrecoverableError      retrying cannot help (bad credentials, 4xx); the chunk goes to dead letters

Outputs map their library's exceptions onto ``RetryableError`` / ``UnrecoverableError``
at their boundary, so the flusher decides retries on our types alone.
"""

from __future__ import annotations


class LogferryError(Exception):
    """Base class of every error logferry raises on purpose."""


class ConfigError(LogferryError):
    """The configuration is invalid; the message names each bad key path."""


class StateError(LogferryError):
    """The state directory cannot be used."""


class BufferOverflowError(LogferryError):
    """An output's buffer is full and its overflow action cannot make room."""


class DeliveryError(LogferryError):
    """An output could not deliver a chunk."""


class RetryableError(DeliveryError):
    """Delivery failed for a reason that may pass (network, 5xx, 429, timeout)."""


class UnrecoverableError(DeliveryError):
    """Delivery failed for a reason that retrying cannot fix; the chunk is set aside."""
