"""The server-wide speech settings: pure, validated where they are made.

``segmenter`` and ``aggressiveness`` can be overridden per session when listening starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final

from media.core.segmenter import SegmenterConfig
from media.errors import InvalidRequest

VAD_SAMPLE_RATES: Final = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts


@dataclass(frozen=True, slots=True)
class SpeechSettings:
    """Server-wide pipeline settings; ``segmenter`` and ``aggressiveness`` can vary per session."""

    sample_rate: int = 16000
    aggressiveness: int = 2
    segmenter: SegmenterConfig = dataclasses.field(default_factory=SegmenterConfig)
    pre_listen_ms: int = 500
    subscriber_queue_ms: int = 2000

    def __post_init__(self) -> None:
        if self.sample_rate not in VAD_SAMPLE_RATES:
            rates = ", ".join(map(str, VAD_SAMPLE_RATES))
            raise InvalidRequest(f"sample_rate must be one of {rates}, got {self.sample_rate}")
        if not 0 <= self.aggressiveness <= 3:
            raise InvalidRequest(
                f"aggressiveness must be between 0 and 3, got {self.aggressiveness}"
            )
        if not 0 <= self.pre_listen_ms <= 5000:
            raise InvalidRequest(
                f"pre_listen_ms must be between 0 and 5000, got {self.pre_listen_ms}"
            )
        if not 100 <= self.subscriber_queue_ms <= 60000:
            raise InvalidRequest(
                f"subscriber_queue_ms must be between 100 and 60000, got {self.subscriber_queue_ms}"
            )

    @property
    def frame_ms(self) -> int:
        return self.segmenter.frame_ms
