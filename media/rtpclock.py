"""RTP timestamps as a count that does not wrap. Pure."""

from __future__ import annotations

from typing import Final

_WRAP: Final = 1 << 32
_HALF: Final = 1 << 31


class TimestampUnwrapper:
    """32-bit RTP timestamps → a count that does not wrap, 0 at the first packet. Pure.

    A late (reordered) packet unwraps to a value before its successor's; crossing 2**32 is no jump.
    """

    def __init__(self) -> None:
        self._last: int | None = None
        self._extended = 0

    def unwrap(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) % _WRAP
        if delta >= _HALF:
            delta -= _WRAP
        value = self._extended + delta
        if delta > 0:
            self._last = timestamp
            self._extended = value
        return value
