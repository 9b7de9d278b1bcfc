"""Where a watcher of every session stands: one process's numbered event log, and the resume token
that records a position in the log of every process of the cluster.

Each process numbers every event of every session it holds (1, 2, 3…) in a bounded log and draws a
random ``incarnation`` when it starts, so a position ``(incarnation, seq)`` means "every event up to
``seq`` of that run of that process". A token maps each owner (``node/worker``) to such a position;
``seq`` is ``None`` while the snapshots that start a stream are still coming (resuming there has to
start over with snapshots). Pure: no clock, no I/O.
"""

from __future__ import annotations

import re
import secrets
from collections import deque
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from media.errors import InvalidRequest

T = TypeVar("T")

MAX_TOKEN_CHARS: Final = 65536
_ENTRY = re.compile(
    r"(?P<owner>[a-z0-9-]{1,63}/[0-9]{1,3})=(?P<inc>[0-9a-f]{1,32}):(?P<seq>[0-9]{1,19}|-)"
)


def new_incarnation() -> str:
    """A fresh id for one run of one process."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Position:
    """Every event of run ``incarnation`` up to ``seq`` was delivered (``None``: not yet known)."""

    incarnation: str
    seq: int | None


Positions = dict[str, Position]
"""A resume token, decoded: owner (``str(Owner)``) → position."""


def encode_token(positions: Positions) -> str:
    return ",".join(
        f"{owner}={pos.incarnation}:{'-' if pos.seq is None else pos.seq}"
        for owner, pos in sorted(positions.items())
    )


def decode_token(token: str) -> Positions:
    """The positions a resume token records; ``InvalidRequest`` when it is not one."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidRequest(
            f"resume_token is longer than {MAX_TOKEN_CHARS} characters", "resume_token"
        )
    positions: Positions = {}
    for entry in token.split(",") if token else []:
        match = _ENTRY.fullmatch(entry)
        if match is None:
            raise InvalidRequest(
                "resume_token is malformed: pass back the resume_token of a WatchSessions "
                "message unchanged",
                "resume_token",
            )
        seq = match.group("seq")
        positions[match.group("owner")] = Position(
            match.group("inc"), None if seq == "-" else int(seq)
        )
    return positions


@dataclass(frozen=True, slots=True)
class Replay(Generic[T]):
    """Resuming is possible: these are the entries after the position, oldest first."""

    entries: list[tuple[int, T]]


@dataclass(frozen=True, slots=True)
class Resync:
    """Resuming is impossible (no position, another run, or too old): start from snapshots."""

    why: str


class EventLog(Generic[T]):
    """The last ``capacity`` items, numbered from 1 in the order appended."""

    def __init__(self, capacity: int, incarnation: str | None = None) -> None:
        if capacity < 1:
            raise ValueError("an event log holds at least one entry")
        self.incarnation = incarnation or new_incarnation()
        self._entries: deque[tuple[int, T]] = deque(maxlen=capacity)
        self.last_seq = 0

    def append(self, item: T) -> int:
        self.last_seq += 1
        self._entries.append((self.last_seq, item))
        return self.last_seq

    @property
    def first_seq(self) -> int:
        """The oldest number still held (``last_seq + 1`` when empty)."""
        return self._entries[0][0] if self._entries else self.last_seq + 1

    def position(self) -> Position:
        return Position(self.incarnation, self.last_seq)

    def after(self, seq: int) -> list[tuple[int, T]]:
        """Entries numbered above ``seq``; ``seq`` must not be older than ``first_seq - 1``."""
        assert seq >= self.first_seq - 1
        newer: list[tuple[int, T]] = []
        for entry in reversed(self._entries):  # a watcher is usually a few entries behind
            if entry[0] <= seq:
                break
            newer.append(entry)
        newer.reverse()
        return newer

    def resume(self, position: Position | None) -> Replay[T] | Resync:
        """What a watcher that stood at ``position`` in this log gets next."""
        if position is None:
            return Resync("no position for this process")
        if position.incarnation != self.incarnation:
            return Resync("this process restarted since")
        if position.seq is None:
            return Resync("the snapshots had not all been delivered")
        if position.seq > self.last_seq:
            raise InvalidRequest(
                f"resume_token is ahead of this process: event {position.seq} was never "
                f"sent (the latest is {self.last_seq})",
                "resume_token",
            )
        if position.seq < self.first_seq - 1:
            return Resync("the events after it are no longer retained")
        return Replay(self.after(position.seq))
