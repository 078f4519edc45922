"""BulkPayload: a ready bulk body handed to aiohttp, written to the socket 64 KiB at a time.

Given ``bytes``, aiohttp (on Python before 3.12.9) joins the request headers and the whole
body into one new ``bytes``, and asyncio's transport copies what the socket did not take at
once into its own buffer: two more copies of a 10 MiB body while it is sent, per request
in flight. Written in slices of a view, each awaited until the transport has drained, the
body is never copied; the clients (elasticsearch, opensearch-py) pass this object through to
aiohttp untouched (see each output's serializer).

Not for ``http_compress``: the clients gzip a body themselves, and need bytes for that.
"""

from __future__ import annotations

from typing import Any

from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

SLICE = 64 * 1024


class BulkPayload(Payload):
    """An NDJSON bulk body (bytes), written in slices; can be sent again (a retry, another host)."""

    def __init__(self, body: bytes, **kwargs: Any) -> None:
        super().__init__(body, content_type="application/x-ndjson", **kwargs)
        self.body = body
        self._size = len(body)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text (for aiohttp's logging, never called on the hot path)."""
        return self.body.decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """The body itself."""
        return self.body

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Write the whole body."""
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        """Write the body (at most ``content_length`` bytes of it) one slice at a time."""
        view = memoryview(self.body)
        end = len(view) if content_length is None else min(len(view), content_length)
        for start in range(0, end, SLICE):
            await writer.write(view[start : min(start + SLICE, end)])
