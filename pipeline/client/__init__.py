"""Agent-side logging hook: write LLM interaction records as JSON lines for the logferry daemon to ship.

Importable on its own (standard library plus optional orjson; no other logferry module)::

    from pipeline import client

    client.configure("./var/log/ai-agent/agent.log")       # or $LOGFERRY_AGENT_LOG, or the default path
    client.log_interaction("What is 2+2?", "4", "gpt-4o", tokens=12, latency_ms=350.2, user="u-17")

    with client.timed("gpt-4o", input=prompt) as t:        # latency measured with perf_counter
        response = openai_client.chat.completions.create(model="gpt-4o", messages=messages)
        t.output = response.choices[0].message.content
        t.record_usage(response)                           # prompt/completion/total tokens

Each record is one ``os.write`` to an ``O_APPEND`` descriptor, so threads and processes never interleave
lines; the file is reopened after rotation; unencodable values are converted; and nothing here ever
raises into the service (failures are counted in ``logger.errors`` and reported once on the
``logferry.client`` logger). See :mod:`pipeline.client.logger` for the details.
"""

from __future__ import annotations

from .encoding import HAVE_ORJSON, encode_line, to_jsonable
from .handler import InteractionHandler
from .logger import (
    DEFAULT_PATH,
    ENV_VAR,
    AsyncInteractionLogger,
    InteractionLogger,
    Writable,
    build_record,
    configure,
    get_logger,
    log_interaction,
)
from .timing import Timer, timed
from .usage import usage_from

__all__ = [
    "DEFAULT_PATH",
    "ENV_VAR",
    "HAVE_ORJSON",
    "AsyncInteractionLogger",
    "InteractionHandler",
    "InteractionLogger",
    "Timer",
    "Writable",
    "build_record",
    "configure",
    "encode_line",
    "get_logger",
    "log_interaction",
    "timed",
    "to_jsonable",
    "usage_from",
]
