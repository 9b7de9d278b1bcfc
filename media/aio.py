"""asyncio helpers every layer shares."""

from __future__ import annotations

import asyncio
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
