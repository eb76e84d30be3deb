"""Verify and restore for the app backend: request bodies in, one Attesto call per item, one
committed write, the answer."""
