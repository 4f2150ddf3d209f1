"""Glue for web frameworks: connect on start-up, optionally run a worker, close on shutdown."""
