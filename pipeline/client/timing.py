"""``timed()``: measure an LLM call's latency and log it, as a context manager or a decorator."""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar, cast, overload

from .logger import AsyncInteractionLogger, InteractionLogger, get_logger
from .usage import usage_from

__all__ = ["Timer", "timed"]

P = ParamSpec("P")
R = TypeVar("R")


class Timer:
    """A latency measurement that logs one record when it ends (see :func:`timed`).

    Inside the block, set ``output``, ``tokens`` (or call :meth:`record_usage`), ``model``, ``input`` or
    ``extra[...]``; after it, ``latency_ms`` and ``request_id`` hold what was logged. An exception raised
    in the block is logged as ``error`` ("Type: message") and propagates unchanged.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        input: Any = None,
        output: Any = None,
        tokens: Any = None,
        logger: InteractionLogger | AsyncInteractionLogger | None = None,
        **extra: Any,
    ) -> None:
        """Prepare a measurement; ``logger`` None means the default logger at logging time."""
        self.model = model
        self.input = input
        self.output = output
        self.tokens = tokens
        self.logger = logger
        self.extra: dict[str, Any] = extra
        self.latency_ms: float | None = None
        self.request_id: str | None = None
        self._start: float | None = None

    def record_usage(self, response: Any) -> None:
        """Take token counts from an SDK response (or its usage, or a dict) via :func:`usage_from`."""
        self.tokens = usage_from(response)

    def __enter__(self) -> Self:
        """Start the clock."""
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the clock and log (queued, not awaited, for an :class:`AsyncInteractionLogger`)."""
        fields = self._stop(exc)
        logger = self.logger if self.logger is not None else get_logger()
        if isinstance(logger, AsyncInteractionLogger):
            self.request_id = logger.submit(**fields)
        else:
            self.request_id = logger.log_interaction(**fields)

    async def __aenter__(self) -> Self:
        """Start the clock."""
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the clock and log (awaited for an :class:`AsyncInteractionLogger`)."""
        if isinstance(self.logger, AsyncInteractionLogger):
            self.request_id = await self.logger.log_interaction(**self._stop(exc))
        else:
            self.__exit__(exc_type, exc, tb)

    def _stop(self, exc: BaseException | None) -> dict[str, Any]:
        start = self._start if self._start is not None else time.perf_counter()
        self.latency_ms = (time.perf_counter() - start) * 1000.0
        extra = dict(self.extra)
        if exc is not None:
            extra.setdefault("error", f"{type(exc).__name__}: {exc}")
        return {
            **extra,
            "input": self.input,
            "output": self.output,
            "model": self.model,
            "tokens": self.tokens,
            "latency_ms": self.latency_ms,
        }

    def _for_call(self, signature: inspect.Signature | None, args: Any, kwargs: Any) -> Timer:
        timer = Timer(
            self.model,
            input=self.input,
            output=self.output,
            tokens=self.tokens,
            logger=self.logger,
            **self.extra,
        )
        if timer.input is not None and timer.model is not None:
            return timer
        arguments: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
        model: Any = None
        if signature is not None:
            try:
                bound = signature.bind(*args, **kwargs)
            except TypeError:
                pass
            else:
                arguments = {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
                bound.apply_defaults()
                model = bound.arguments.get("model")
        if timer.model is None and isinstance(model, str):
            timer.model = model
            arguments.pop("model", None)
        if timer.input is None:
            timer.input = next(iter(arguments.values())) if len(arguments) == 1 else arguments or None
        return timer

    def _set_result(self, result: Any) -> None:
        if self.output is None:
            self.output = result
        if self.tokens is None:
            usage = usage_from(result)
            if any(value is not None for value in usage.values()):
                self.tokens = usage

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        """Decorate a sync or async function: each call is timed and logged.

        Unless given to :func:`timed`, ``input`` is the call's arguments (the single argument itself, or
        a name -> value dict; ``self``/``cls`` left out), ``model`` a ``model`` str argument, ``output``
        the return value and ``tokens`` its usage if :func:`usage_from` finds any.
        """
        try:
            signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None

        if inspect.iscoroutinefunction(func):
            async_func = cast(Callable[..., Awaitable[Any]], func)

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                timer = self._for_call(signature, args, kwargs)
                async with timer:
                    result = await async_func(*args, **kwargs)
                    timer._set_result(result)
                return result

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            timer = self._for_call(signature, args, kwargs)
            with timer:
                result = func(*args, **kwargs)
                timer._set_result(result)
            return result

        return wrapper


@overload
def timed(model: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def timed(
    model: str | None = None,
    /,
    *,
    input: Any = None,
    output: Any = None,
    tokens: Any = None,
    logger: InteractionLogger | AsyncInteractionLogger | None = None,
    **extra: Any,
) -> Timer: ...


def timed(
    model: str | Callable[P, R] | None = None,
    /,
    *,
    input: Any = None,
    output: Any = None,
    tokens: Any = None,
    logger: InteractionLogger | AsyncInteractionLogger | None = None,
    **extra: Any,
) -> Timer | Callable[P, R]:
    """Time an LLM call (``time.perf_counter``, milliseconds as float) and log it as one record.

    As a context manager (``with`` or ``async with``)::

        with timed("gpt-4o", input=prompt) as t:
            response = client.chat.completions.create(model="gpt-4o", messages=messages)
            t.output = response.choices[0].message.content
            t.record_usage(response)

    As a decorator, ``@timed``, ``@timed("gpt-4o")`` or ``@timed(logger=..., team="search")`` on a sync
    or async function (see :meth:`Timer.__call__` for what is logged). Extra keyword arguments become
    extra record fields. The record goes to ``logger`` or, if None, to the default logger.
    """
    if callable(model):
        return Timer()(model)
    return Timer(model, input=input, output=output, tokens=tokens, logger=logger, **extra)
