"""Token usage extraction from LLM SDK responses (OpenAI, Anthropic, Gemini; objects or dicts)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

__all__ = ["usage_from"]


def _field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings, ``obj.name`` otherwise; None when absent or when access fails."""
    if obj is None:
        return None
    try:
        if isinstance(obj, Mapping):
            return obj.get(name)
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property raising means "unknown", never an error for the caller
        return None


def _int(value: Any) -> int | None:
    """The value as int if it is an integer count (not bool, not a mock), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def usage_from(response: Any) -> dict[str, int | None]:
    """Extract token counts from an LLM response, its ``usage`` object, or the dict form of either.

    Returns ``{"prompt_tokens": ..., "completion_tokens": ..., "tokens": ...}`` with None for anything
    unknown; it never raises. Recognised shapes (attribute or key access):

    - OpenAI chat completions: ``usage.prompt_tokens / completion_tokens / total_tokens``;
    - Anthropic messages and OpenAI Responses API: ``usage.input_tokens / output_tokens``. Anthropic's
      ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` (which its ``input_tokens``
      excludes) are added to ``prompt_tokens``, so that it counts the whole prompt as OpenAI's does;
    - Gemini: ``usage_metadata.prompt_token_count / candidates_token_count / total_token_count``;
    - the dict this function returns (``tokens`` as the total), so results can be passed around freely.

    ``tokens`` is the reported total, else the sum of prompt and completion when both are known.
    """
    usage = _field(response, "usage")
    if usage is None:
        usage = _field(response, "usage_metadata")
    if usage is None:
        usage = response
    prompt = _int(_field(usage, "prompt_tokens"))
    completion = _int(_field(usage, "completion_tokens"))
    total = _int(_field(usage, "total_tokens"))
    if prompt is None and completion is None:
        input_tokens = _int(_field(usage, "input_tokens"))
        if input_tokens is not None:
            cached = (
                _int(_field(usage, name)) or 0
                for name in ("cache_creation_input_tokens", "cache_read_input_tokens")
            )
            prompt = input_tokens + sum(cached)
        completion = _int(_field(usage, "output_tokens"))
    if prompt is None and completion is None:
        prompt = _int(_field(usage, "prompt_token_count"))
        completion = _int(_field(usage, "candidates_token_count"))
        total = total if total is not None else _int(_field(usage, "total_token_count"))
    if total is None:
        total = _int(_field(usage, "tokens"))
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "tokens": total}
