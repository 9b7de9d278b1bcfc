"""asyncio helpers every layer shares."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> list[BaseException]:
    """Cancel ``tasks`` and wait until every one has finished.

    The tasks' own cancellation is expected and swallowed; a cancellation of the caller while it
    waits is not (it propagates, with the tasks already cancelled). Returns the exceptions the
    tasks ended with other than cancellation, retrieved so asyncio does not report them as lost.
    """
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
    return [
        error for task in tasks if not task.cancelled() and (error := task.exception()) is not None
    ]


class CloseOnce:
    """Runs an owner's close once: a later or concurrent caller waits for that one to end."""

    def __init__(self) -> None:
        self._done: asyncio.Future[None] | None = None

    @property
    def started(self) -> bool:
        return self._done is not None

    async def run(self, close: Callable[[], Awaitable[None]]) -> None:
        if self._done is not None:
            await asyncio.shield(self._done)
            return
        self._done = asyncio.get_running_loop().create_future()
        try:
            await close()
        finally:
            self._done.set_result(None)
