"""Consumes a published audio track: decoded frames in, media clock and frame callbacks out.

aiortc decodes Opus with PyAV on its own thread; this reads the decoded frames on the event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

logger = logging.getLogger(__name__)


class AudioConsumer:
    """Reads one remote audio track until it ends, keeping the session's media clock."""

    def __init__(
        self,
        session_id: str,
        track: MediaStreamTrack,
        on_frame: Callable[[Any], None],
    ) -> None:
        self.session_id = session_id
        self._track = track
        self._on_frame = on_frame
        self._samples = 0
        self._sample_rate = 48000
        self.frames = 0

    @property
    def media_offset_ms(self) -> int:
        """Milliseconds of audio decoded so far: the session's audio clock."""
        return self._samples * 1000 // self._sample_rate

    async def run(self) -> None:
        logger.debug("session %s: audio consumer started", self.session_id)
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                logger.debug("session %s: audio track ended", self.session_id)
                return
            assert isinstance(frame, AudioFrame)
            self._sample_rate = frame.sample_rate
            self._samples += frame.samples
            self.frames += 1
            self._on_frame(frame)
