"""relay: receipt verification and webhook relay daemon for Attesto."""

__version__ = "0.1.0"
