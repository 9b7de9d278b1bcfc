"""aiortc glue: publisher and player peers, negotiation, tracks, relay, agent voice."""
