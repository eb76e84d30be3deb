"""Attesto, the peer relay calls and hears from: the verify client (with its breaker) and the
inbound webhook signature; the simulator stands in for it in tests and `relay demo`."""
