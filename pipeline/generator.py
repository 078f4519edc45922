"""Reproducible LLM interaction records: for tests, demos and benchmarks.

Every record has a unique ``request_id`` derived from the seed and its sequence number,
so a consumer can check that each arrived exactly once. Sizes follow a log-normal
spread (most records a few KB, a long tail), text mixes prose, code, escapes, CJK and
emoji. ``bad_every`` adds malformed lines of known kinds.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import orjson

MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4", "claude-haiku-4", "llama-3.1-70b-instruct", "gemini-2.0-flash"]
WORDS = (
    "the model agent tool call returned context window token latency request response user system "
    "assistant prompt completion retry error timeout function schema JSON field value summary answer "
    "question document retrieval embedding vector search index log pipeline buffer chunk flush"
).split()
EXTRAS = ["\n", "\t", '"quoted"', "\\path\\to\\file", "こんにちは世界", "数据管道", "Привет", "🙂", "🚀🔥",
          "naïve café", "<tag attr='x'>", '{"k": [1, 2]}', "def f(x):\n    return x * 2\n"]
BAD_LINES = [
    b'{"type": "llm_interaction", "input": "truncated',
    b"not json at all",
    b'{"type": "llm_interaction", "input": "bad utf8 \xff\xfe"}',
    b"[1, 2, 3]",
    b'{"type": "llm_interaction", "tokens": NaN, "input": "x"}',
    b"",
]
T0 = 1_795_000_000.0


def request_id(seed: int, seq: int) -> str:
    """The id of record ``seq`` in the stream of ``seed``."""
    return f"{seed:08x}-{seq:012d}"


def _corpus(rng: random.Random, size: int = 1 << 18) -> str:
    parts, n = [], 0
    while n < size:
        piece = rng.choice(EXTRAS) if rng.random() < 0.04 else rng.choice(WORDS)
        parts.append(piece)
        n += len(piece) + 1
    return " ".join(parts)


def _text(rng: random.Random, corpus: str, median: int, max_chars: int) -> str:
    n = int(min(max_chars, max(8, rng.lognormvariate(math.log(median), 1.0))))
    start = rng.randrange(0, max(1, len(corpus) - n - 1))
    return corpus[start : start + n]


def records(
    count: int, start: int = 0, seed: int = 1, max_chars: int = 16384, t0: float = T0, spacing: float = 0.01
) -> Iterator[dict[str, Any]]:
    """Yield ``count`` interaction records, sequence numbers from ``start``."""
    corpus = _corpus(random.Random(seed))
    rng = random.Random(seed * 1_000_003 + start)
    for seq in range(start, start + count):
        inp, out = _text(rng, corpus, 900, max_chars), _text(rng, corpus, 1400, max_chars)
        yield {
            "type": "llm_interaction", "seq": seq, "request_id": request_id(seed, seq),
            "model": rng.choice(MODELS), "input": inp, "output": out, "tokens": (len(inp) + len(out)) // 4,
            "prompt_tokens": len(inp) // 4, "completion_tokens": len(out) // 4,
            "latency_ms": round(rng.lognormvariate(math.log(850), 0.6), 3), "timestamp": round(t0 + seq * spacing, 6),
            "metadata": {"agent": "support-bot", "tool_calls": rng.randrange(4)},
        }


def lines(count: int, start: int = 0, seed: int = 1, bad_every: int = 0, **kwargs: Any) -> Iterator[bytes]:
    """Yield JSON lines (with newline); after every ``bad_every`` good ones, one malformed line."""
    for n, record in enumerate(records(count, start, seed, **kwargs), 1):
        yield orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        if bad_every and n % bad_every == 0:
            yield BAD_LINES[(n // bad_every - 1) % len(BAD_LINES)] + b"\n"


def write(path: str, count: int, **kwargs: Any) -> int:
    """Append ``count`` records (plus any bad lines) to ``path``; returns bytes written."""
    written = 0
    with open(path, "ab") as out:
        batch: list[bytes] = []
        for line in lines(count, **kwargs):
            batch.append(line)
            if len(batch) >= 1000:
                written += out.write(b"".join(batch))
                batch.clear()
        written += out.write(b"".join(batch))
    return written
