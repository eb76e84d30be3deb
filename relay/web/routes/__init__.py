"""HTTP handlers, one module per audience."""
