"""RTP packets back in sequence order, on sequence numbers alone. Pure: no clock, no asyncio."""

from __future__ import annotations

from typing import Final, Generic, TypeVar

T = TypeVar("T")

SEQUENCE_WRAP: Final = 1 << 16
_HALF: Final = 1 << 15
RESTART_WINDOW: Final = 3000  # a minute of 20 ms packets: further back is a sender that restarted


class ReorderBuffer(Generic[T]):
    """Holds up to ``depth`` packets while one before them is missing, releases them in order.

    ``push`` a packet, then ``pop`` until it returns None. A missing packet is waited for until
    ``depth`` later ones are held (``depth`` 0: not at all); then it counts as lost and the next
    one held is released, with ``skipped`` saying how many were lost right before it. A packet
    older than one already released, or a duplicate, is dropped (``late``). A packet far behind
    what was released is a sender that restarted its sequence numbers: it starts afresh.
    """

    def __init__(self, depth: int) -> None:
        assert depth >= 0
        self.depth = depth
        self.skipped = 0
        self.lost = 0
        self.late = 0
        self._next: int | None = None
        self._held: dict[int, T] = {}

    def push(self, sequence: int, item: T) -> None:
        if self._next is None:
            self._next = sequence
        delta = (sequence - self._next) % SEQUENCE_WRAP
        if delta >= _HALF:
            delta -= SEQUENCE_WRAP
        if delta < -RESTART_WINDOW:
            self._held.clear()
            self._next = sequence
            delta = 0
        if delta < 0 or self._next + delta in self._held:
            self.late += 1
            return
        self._held[self._next + delta] = item

    def pop(self) -> T | None:
        """The next packet in order, or None while the missing one is still waited for."""
        held = self._held
        if not held or self._next is None:
            return None
        item = held.pop(self._next, None)
        if item is not None:
            self.skipped = 0
        elif len(held) > self.depth:
            first = min(held)
            self.skipped = first - self._next
            self.lost += self.skipped
            self._next = first
            item = held.pop(first)
        else:
            return None
        self._next += 1
        return item
