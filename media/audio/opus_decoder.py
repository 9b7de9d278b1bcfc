"""Opus packets → 16-bit PCM at the rate the VAD wants, with libopus called through ctypes.

libopus decodes natively to 8, 12, 16, 24 or 48 kHz, mono or stereo; asking it for 16 kHz mono
makes a resampler unnecessary. PyAV's Opus decoders cannot be asked for a rate (they always give
48 kHz), so this binds the libopus that PyAV's wheel already bundles (or the system's): no new
dependency, three C functions.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import pathlib
import weakref
from typing import Final

OPUS_CLOCK_RATE: Final = 48000
NATIVE_RATES: Final = (8000, 12000, 16000, 24000, 48000)
MAX_PACKET_MS: Final = 120
_OPUS_OK: Final = 0


class OpusUnavailable(OSError):
    """No libopus could be loaded (``hark serve`` says so and exits with status 2)."""


def _candidate_paths() -> list[str]:
    found: list[str] = []
    try:
        import av

        libs = pathlib.Path(av.__file__).resolve().parent.parent / "av.libs"
        found += sorted(str(p) for p in libs.glob("libopus*.so*"))
    except ImportError:
        pass
    system = ctypes.util.find_library("opus")
    if system:
        found.append(system)
    return found


@functools.cache
def libopus() -> ctypes.CDLL:
    """PyAV's bundled libopus, else the system's; raises ``OpusUnavailable`` when neither loads."""
    tried = []
    for path in _candidate_paths():
        try:
            lib = ctypes.CDLL(path)
        except OSError as exc:
            tried.append(f"{path}: {exc}")
            continue
        _declare(lib)
        return lib
    detail = "; ".join(tried) or "PyAV bundles none and ctypes.util.find_library('opus') finds none"
    raise OpusUnavailable(f"libopus cannot be loaded ({detail}); install libopus0")


def _declare(lib: ctypes.CDLL) -> None:
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_decode.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int32,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    lib.opus_decode.restype = ctypes.c_int
    lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_decoder_destroy.restype = None
    lib.opus_packet_get_nb_samples.argtypes = [ctypes.c_char_p, ctypes.c_int32, ctypes.c_int32]
    lib.opus_packet_get_nb_samples.restype = ctypes.c_int


class OpusDecoder:
    """One Opus stream's decoder state; mono 16-bit PCM at ``rate`` (one of ``NATIVE_RATES``).

    Every method returns PCM bytes, or None where libopus refuses the packet (nothing raised).
    """

    def __init__(self, rate: int) -> None:
        if rate not in NATIVE_RATES:
            raise ValueError(f"libopus decodes to {NATIVE_RATES} Hz, not {rate}")
        self.rate = rate
        self._lib = lib = libopus()
        error = ctypes.c_int(0)
        handle = lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        if error.value != _OPUS_OK or not handle:
            raise OpusUnavailable(f"opus_decoder_create({rate}, 1) failed: {error.value}")
        self._handle: int | None = handle
        self._max_samples = rate * MAX_PACKET_MS // 1000
        self._pcm = ctypes.create_string_buffer(self._max_samples * 2)
        self._destroy = weakref.finalize(self, lib.opus_decoder_destroy, handle)

    def decode(self, packet: bytes) -> bytes | None:
        return self._run(packet, len(packet), self._max_samples, 0)

    def conceal(self, samples: int) -> bytes | None:
        """``samples`` of packet-loss concealment, for audio that never arrived."""
        return self._run(None, 0, samples, 0)

    def recover(self, next_packet: bytes, samples: int) -> bytes | None:
        """The ``samples`` lost right before ``next_packet``, from its forward error correction
        (concealment where it carries none); decode ``next_packet`` itself afterwards."""
        return self._run(next_packet, len(next_packet), samples, 1)

    def samples_in(self, packet: bytes) -> int:
        """Samples per channel ``packet`` decodes to at this rate (negative: not a valid packet)."""
        return int(self._lib.opus_packet_get_nb_samples(packet, len(packet), self.rate))

    def close(self) -> None:
        self._handle = None
        self._destroy()

    def _run(self, data: bytes | None, size: int, samples: int, fec: int) -> bytes | None:
        if self._handle is None or samples > self._max_samples:
            return None
        decoded = self._lib.opus_decode(self._handle, data, size, self._pcm, samples, fec)
        if decoded < 0:
            return None
        return ctypes.string_at(self._pcm, decoded * 2)
