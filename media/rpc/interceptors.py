"""gRPC server interceptors: per-method metrics, bearer-token auth (before a request is decoded),
and precise answers to requests that do not decode."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeAlias

import grpc

from media.errors import HarkError, MalformedRequest, Unauthorized
from media.metrics import Metrics
from media.rpc.error_status import abort_with
from media.server.auth import tokens_match

logger = logging.getLogger(__name__)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


def _status(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts every call by method and status code, and times unary-unary calls."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        requests, durations = self._metrics.grpc_requests, self._metrics.grpc_duration
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        # A response stream written with context.write (grpc's health Watch) is a coroutine.
        written = handler.unary_stream and not inspect.isasyncgenfunction(handler.unary_stream)
        if handler.unary_unary or handler.stream_unary or written:
            inner: Any = handler.unary_unary or handler.stream_unary or handler.unary_stream

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                start = time.perf_counter()
                error: BaseException | None = None
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    requests.labels(method, _status(context, error)).inc()
                    if handler.unary_unary:
                        durations.labels(method).observe(time.perf_counter() - start)

            if handler.stream_unary:
                return grpc.stream_unary_rpc_method_handler(unary, **kwargs)
            if written:
                return grpc.unary_stream_rpc_method_handler(unary, **kwargs)
            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        if handler.unary_stream:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                error: BaseException | None = None
                try:
                    async for item in inner_stream(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    requests.labels(method, _status(context, error)).inc()

            return grpc.unary_stream_rpc_method_handler(stream, **kwargs)
        return handler


class BearerAuth(grpc.aio.ServerInterceptor):
    """Requires ``authorization: Bearer <token>`` metadata; health and reflection are exempt."""

    EXEMPT: Final = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, token: str) -> None:
        self._token = token

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.EXEMPT):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        header = str(metadata.get("authorization", ""))
        scheme, _, given = header.partition(" ")
        if scheme.lower() == "bearer" and tokens_match(given.strip(), self._token):
            return handler
        message = (
            "missing bearer token: send 'authorization: Bearer <token>' metadata"
            if not header
            else "wrong bearer token"
        )
        return _refused(handler, Unauthorized(message))


def _ignored(raw: bytes) -> None:
    """A refused call's request is never decoded: garbage from a stranger costs nothing."""


def _refused(handler: Handler, error: HarkError) -> Handler:
    async def deny_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await abort_with(context, error)

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await abort_with(context, error)
        yield None  # pragma: no cover

    kwargs: dict[str, Any] = {
        "request_deserializer": _ignored,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(deny_unary, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(deny_stream, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(deny_unary, **kwargs)
    return grpc.stream_stream_rpc_method_handler(deny_stream, **kwargs)


class _Undecodable:
    """Stands in for a request whose bytes did not decode, so the handler can answer it."""


UNDECODABLE: Final = _Undecodable()


class MalformedRequests(grpc.aio.ServerInterceptor):
    """Answers a request that does not decode as its method's message with INVALID_ARGUMENT
    naming the method (grpc.aio would answer UNKNOWN and log a traceback per request), and logs
    such requests at INFO, at most once per ``log_interval`` seconds with a count."""

    def __init__(self, log_interval: float = 10.0) -> None:
        self._log_interval = log_interval
        self._logged_at = -float("inf")
        self._unlogged = 0

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        kwargs = {
            "request_deserializer": self._tolerant(method, handler.request_deserializer),
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _checked_unary(method, handler.unary_unary), **kwargs
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _checked_unary(method, handler.unary_stream), **kwargs
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _checked_stream(method, handler.stream_unary), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            _checked_stream(method, handler.stream_stream), **kwargs
        )

    def _tolerant(
        self, method: str, deserializer: Callable[[bytes], Any]
    ) -> Callable[[bytes], Any]:
        def decode(raw: bytes) -> Any:
            try:
                return deserializer(raw)
            except Exception:  # whatever the message class raises for bytes that are not it
                self._note(method)
                return UNDECODABLE

        return decode

    def _note(self, method: str) -> None:
        now = time.monotonic()
        if now - self._logged_at < self._log_interval:
            self._unlogged += 1
            return
        logger.info(
            "undecodable %s request refused (%d more since the last such line)",
            method,
            self._unlogged,
        )
        self._logged_at, self._unlogged = now, 0


def _checked_unary(method: str, behaviour: Any) -> Any:
    """``behaviour`` for one request, which is refused first if it did not decode."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if request is UNDECODABLE:
                await abort_with(context, MalformedRequest(method))
            async for item in behaviour(request, context):
                yield item

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is UNDECODABLE:
            await abort_with(context, MalformedRequest(method))
        return await behaviour(request, context)

    return unary


async def _decoded(method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if request is UNDECODABLE:
            raise MalformedRequest(method)
        yield request


def _checked_stream(method: str, behaviour: Any) -> Any:
    """``behaviour`` for a request stream, which raises ``MalformedRequest`` at the first message
    that did not decode; a handler that does not answer it itself gets it answered here."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                async for item in behaviour(_decoded(method, requests), context):
                    yield item
            except MalformedRequest as exc:
                await abort_with(context, exc)

        return stream

    async def unary(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(_decoded(method, requests), context)
        except MalformedRequest as exc:
            await abort_with(context, exc)

    return unary
