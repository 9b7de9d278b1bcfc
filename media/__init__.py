"""Hark: a WebRTC media plugin service for voice agents."""

__version__ = "0.1.0"
