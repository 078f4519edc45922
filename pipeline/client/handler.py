"""``InteractionHandler``: turn stdlib ``logging`` calls that carry interaction fields into record lines."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from .logger import InteractionLogger, Writable, get_logger

__all__ = ["InteractionHandler"]

_FIELDS = (
    "input",
    "output",
    "model",
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
    "request_id",
)


class InteractionHandler(logging.Handler):
    """A :class:`logging.Handler` writing one ``llm_interaction`` line per interaction log record.

    A record qualifies when its ``extra`` holds an ``interaction`` mapping, e.g.
    ``log.info("chat", extra={"interaction": {"input": q, "output": a, "model": "gpt-4o", "team": "x"}})``,
    or any of the fields ``input``/``output``/``model`` directly
    (``extra={"input": q, "output": a, "model": "gpt-4o", "tokens": 42}``); other records are ignored,
    so the handler can sit next to ordinary ones. Fields beyond the standard ones become extra fields of
    the line; the record also gets ``logger`` (the logger's name), ``message`` (when non-empty),
    ``error`` (from ``exc_info``), and the LogRecord's creation time as ``timestamp`` unless given.
    """

    def __init__(
        self,
        target: InteractionLogger | str | os.PathLike[str] | Writable | None = None,
        level: int = logging.NOTSET,
    ) -> None:
        """Write to ``target``: a logger (not closed by :meth:`close`), a path or stream (owned and
        closed), or None for the module's default logger (looked up at each emit)."""
        super().__init__(level)
        self._owned: InteractionLogger | None = None
        self._target: InteractionLogger | None = None
        if isinstance(target, InteractionLogger):
            self._target = target
        elif target is not None:
            self._owned = self._target = InteractionLogger(target)

    @property
    def logger(self) -> InteractionLogger:
        """The :class:`InteractionLogger` records go to."""
        return self._target if self._target is not None else get_logger()

    @staticmethod
    def interaction_fields(record: logging.LogRecord) -> dict[str, Any] | None:
        """The interaction fields a LogRecord carries, or None when it is not an interaction record."""
        attrs = record.__dict__
        interaction = attrs.get("interaction")
        if isinstance(interaction, Mapping):
            return {str(key): value for key, value in interaction.items()}
        if not any(name in attrs for name in ("input", "output", "model")):
            return None
        return {name: attrs[name] for name in _FIELDS if name in attrs}

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's interaction as one line (ignoring records without one)."""
        try:
            fields = self.interaction_fields(record)
            if fields is None:
                return
            fields.setdefault("timestamp", record.created)
            fields.setdefault("logger", record.name)
            message = record.getMessage()
            if message:
                fields.setdefault("message", message)
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields.setdefault("error", f"{type(exc).__name__}: {exc}")
            self.logger.log_interaction(
                fields.pop("input", None),
                fields.pop("output", None),
                fields.pop("model", None),
                fields.pop("tokens", None),
                fields.pop("latency_ms", None),
                **fields,
            )
        except Exception:  # noqa: BLE001 - the stdlib convention: report via handleError, never raise
            self.handleError(record)

    def close(self) -> None:
        """Close the logger if this handler created it, then the handler."""
        try:
            if self._owned is not None:
                self._owned.close()
        finally:
            super().close()
