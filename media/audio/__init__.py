"""Audio: Opus decode, PCM conversion, the speech pipeline, StreamAudio subscribers."""
