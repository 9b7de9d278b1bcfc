"""Each worker's session ids, journaled in its run directory so that the worker restarted in its
place can answer for them: the ones still open when it died as ``CLOSED(NODE_LOST)``.

One line per session creation (``open ID ORIGIN``) and per close (``closed ID REASON``), appended
as they happen (never per frame). A torn last line (a worker killed mid-write) is skipped. The file
is rewritten from the sessions still held once it has grown well past them.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO

from media.core.events import CloseReason, SessionEvent, SessionState, StateChanged
from media.core.session import Origin, Session

COMPACT_AFTER_LINES = 1024


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """A session the journal knows of; ``closed`` is ``None`` while it was open."""

    session_id: str
    origin: Origin
    closed: CloseReason | None


def read_journal(path: pathlib.Path) -> list[JournalEntry]:
    """The sessions journaled at ``path`` (none when there is no file), oldest first."""
    try:
        text = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    origins: dict[str, Origin] = {}
    closed: dict[str, CloseReason] = {}
    for line in text.splitlines(keepends=True):
        parts = line.split()
        if not line.endswith("\n") or len(parts) != 3:
            continue
        kind, session_id, name = parts
        if kind == "open" and name in Origin.__members__:
            origins[session_id] = Origin[name]
        elif kind == "closed" and name in CloseReason.__members__:
            closed[session_id] = CloseReason[name]
    return [JournalEntry(sid, origin, closed.get(sid)) for sid, origin in origins.items()]


class SessionJournal:
    """Appends a table's session lifecycle to ``path``; ``record`` is a table observer."""

    def __init__(self, path: pathlib.Path, sessions: Callable[[], Iterable[Session]]) -> None:
        self.path = path
        self._sessions = sessions
        self._file: IO[str] | None = None
        self._lines = 0

    def rewrite(self) -> None:
        """Replace the file with the sessions held now (atomically: a crash keeps the old one)."""
        fresh = self.path.with_suffix(".new")
        with fresh.open("w", encoding="ascii") as out:
            for session in self._sessions():
                out.write(_opened(session))
                if session.close_reason is not None:
                    out.write(_closed(session.id, session.close_reason))
        fresh.replace(self.path)
        self.close()
        self._file = self.path.open("a", encoding="ascii", buffering=1)
        self._lines = 0

    def record(self, event: SessionEvent, session: Session) -> None:
        payload = event.payload
        if self._file is None or not isinstance(payload, StateChanged):
            return
        if payload.state is SessionState.NEW:
            self._file.write(_opened(session))
        elif payload.state is SessionState.CLOSED and payload.close_reason is not None:
            self._file.write(_closed(session.id, payload.close_reason))
        else:
            return
        self._lines += 1
        if self._lines > COMPACT_AFTER_LINES + 2 * sum(1 for _ in self._sessions()):
            self.rewrite()

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _opened(session: Session) -> str:
    return f"open {session.id} {session.origin.name}\n"


def _closed(session_id: str, reason: CloseReason) -> str:
    return f"closed {session_id} {reason.name}\n"
