"""The pure core: no asyncio, no I/O, time passed in as ``now``."""
