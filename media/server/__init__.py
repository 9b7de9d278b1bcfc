"""Live sessions: the session table, watch subscriptions, auth."""
