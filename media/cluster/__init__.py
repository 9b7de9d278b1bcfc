"""Placement and forwarding between the workers of a host and the nodes of a cluster."""
