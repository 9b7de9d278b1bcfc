"""Live sessions: LiveSession (one per session), the session table, watch streams, auth."""
