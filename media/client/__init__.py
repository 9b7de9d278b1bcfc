"""The Python SDK."""

from media.client.hark_client import HarkClient

__all__ = ["HarkClient"]
