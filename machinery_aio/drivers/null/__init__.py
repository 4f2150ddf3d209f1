"""null driver."""
