"""Log records that name their session."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

SessionLogger = logging.LoggerAdapter[logging.Logger]


class _SessionAdapter(SessionLogger):
    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        session_id = self.extra["session_id"] if self.extra else ""
        kwargs["extra"] = {**kwargs.get("extra", {}), "session_id": session_id}
        return f"session {session_id}: {msg}", kwargs


def session_logger(logger: logging.Logger, session_id: str) -> SessionLogger:
    """``logger`` with ``session <id>: `` before every message and ``session_id`` on the record
    (the JSON log format prints it as a field), so no call site writes the prefix by hand."""
    return _SessionAdapter(logger, {"session_id": session_id})
