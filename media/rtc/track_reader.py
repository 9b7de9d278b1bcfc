"""Reads the decoded frames of a remote aiortc audio track on the event loop.

aiortc decodes Opus with PyAV on its own thread and hands the frames over through ``recv()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from media.logs import session_logger

logger = logging.getLogger(__name__)


class AudioConsumer:
    """Reads one remote audio track until it ends."""

    def __init__(
        self,
        session_id: str,
        track: MediaStreamTrack,
        on_frame: Callable[[AudioFrame], None],
    ) -> None:
        self.session_id = session_id
        self._track = track
        self._on_frame = on_frame
        self._log = session_logger(logger, session_id)

    async def run(self) -> None:
        self._log.debug("audio consumer started")
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                self._log.debug("audio track ended")
                return
            assert isinstance(frame, AudioFrame)
            self._on_frame(frame)
