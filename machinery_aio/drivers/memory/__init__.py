"""memory driver."""
