"""One adapter module per library; each is also that library's worker application."""
