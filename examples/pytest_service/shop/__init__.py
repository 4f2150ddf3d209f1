"""A small shop service: an HTTP API that sends tasks, and the tasks."""
