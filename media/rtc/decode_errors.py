"""aiortc's per-packet decode failures as a counter instead of log lines."""

from __future__ import annotations

import logging
from collections.abc import Callable


class DecodeErrorCounter(logging.Filter):
    """Counts aiortc's per-packet decode failures and keeps them out of the log.

    aiortc skips a packet it cannot decode and logs a warning for each one; attached to the
    ``aiortc.rtcrtpreceiver`` logger, this turns those warnings into a counter.
    """

    def __init__(self, on_error: Callable[[], None]) -> None:
        super().__init__()
        self._on_error = on_error

    def filter(self, record: logging.LogRecord) -> bool:
        if "failed to decode" in str(record.msg):
            self._on_error()
            return False
        return True
