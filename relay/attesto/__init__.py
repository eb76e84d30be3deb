"""attesto."""
