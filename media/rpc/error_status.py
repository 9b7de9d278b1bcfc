"""Hark's errors ⇄ precise gRPC status codes: each HarkError ends its call with a status code,
its message and a ``google.rpc.ErrorInfo`` (reason and field) the Python SDK maps back to the same
exception type; ``unary`` and ``streaming`` wrap the servicer's methods with it."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, NoReturn, TypeVar

import grpc
from google.protobuf.any_pb2 import Any as AnyPb
from google.rpc.status_pb2 import Status
from grpc_status import rpc_status

from media.errors import (
    CapacityExceeded,
    Draining,
    HarkError,
    InvalidRequest,
    PlaybackExists,
    ReadyDeadlineExceeded,
    RevisionOutOfRange,
    SessionConflict,
    SessionNotFound,
    SubscriberTooSlow,
    Unauthorized,
)
from media.rpc.messages import error_info_pb

_CODES: Final[list[tuple[type[HarkError], grpc.StatusCode]]] = [
    (SessionNotFound, grpc.StatusCode.NOT_FOUND),
    (PlaybackExists, grpc.StatusCode.ALREADY_EXISTS),
    (ReadyDeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (SessionConflict, grpc.StatusCode.FAILED_PRECONDITION),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (RevisionOutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (SubscriberTooSlow, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Draining, grpc.StatusCode.UNAVAILABLE),
    (Unauthorized, grpc.StatusCode.UNAUTHENTICATED),
]


def code_for(exc: HarkError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: HarkError) -> NoReturn:
    """End the call with ``error``'s status code, its message and its ``ErrorInfo``."""
    code = code_for(error)
    details = AnyPb()
    details.Pack(error_info_pb(error))
    status = rpc_status.to_status(Status(code=code.value[0], message=str(error), details=[details]))
    await context.abort(status.code, status.details, status.trailing_metadata)
    raise AssertionError("abort returned") from error


R = TypeVar("R")


def unary(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except HarkError as exc:
            await abort_with(context, exc)

    return wrapper


def streaming(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[R]]:
    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in fn(self, request, context):
                yield item
        except HarkError as exc:
            await abort_with(context, exc)

    return wrapper
