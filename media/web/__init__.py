"""The HTTP edge: WHIP, WHEP, the SSE mirror and listening, static files."""
