"""librdkafka settings from a Kafka connection's config keys (brokers, TLS, SASL).

Shared by everything that talks to Kafka (the output now; a consumer later), so the keys and
their meaning stay the same everywhere.
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import KafkaError

from pipeline.config import secret_value
from pipeline.outputs.kafka.config import KafkaConnection

_client_log = logging.getLogger("logferry.kafka.librdkafka")


def security_protocol(config: KafkaConnection) -> str:
    """librdkafka's ``security.protocol`` for ``config``.

    >>> security_protocol(KafkaConnection(brokers=["k:9093"], tls=True))
    'SSL'
    >>> security_protocol(KafkaConnection(brokers=["k:9092"], sasl_mechanism="PLAIN", username="u", password="p"))
    'SASL_PLAINTEXT'
    """
    return ("SASL_" if config.sasl_mechanism else "") + ("SSL" if config.tls else "PLAINTEXT")


class ClientErrors:
    """librdkafka's ``error_cb``: keeps the last connection error a client reported.

    A request that fails for want of a broker says only "transport failure"; the reason
    (connection refused, credentials refused, certificate not trusted) arrives here.
    """

    def __init__(self) -> None:
        self.last: KafkaError | None = None

    def __call__(self, error: KafkaError) -> None:
        """Called by librdkafka when a client is polled; "all brokers down" says less than what came before it."""
        if error.code() != KafkaError._ALL_BROKERS_DOWN:
            self.last = error

    def refused_credentials(self) -> bool:
        """Whether the last error was an authentication failure."""
        return self.last is not None and self.last.code() == KafkaError._AUTHENTICATION


def client_settings(config: KafkaConnection, client_id: str, errors: ClientErrors | None = None) -> dict[str, Any]:
    """librdkafka settings of a client connecting as ``config`` says; OSError if the password file is unreadable."""
    settings: dict[str, Any] = {
        "bootstrap.servers": ",".join(config.brokers), "client.id": client_id, "logger": _client_log,
        "security.protocol": security_protocol(config),
    }
    if errors is not None:
        settings["error_cb"] = errors
    if config.ca_file is not None:
        settings["ssl.ca.location"] = str(config.ca_file)
    if config.sasl_mechanism is not None:
        settings.update({"sasl.mechanism": config.sasl_mechanism, "sasl.username": config.username,
                         "sasl.password": secret_value(config.password, config.password_file)})
    return settings
