"""Helpers the tests share: loopback peers, stores, signed deliveries, live processes."""
