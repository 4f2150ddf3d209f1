"""``eager://``: tasks run inline inside ``send_task``, for tests and scripts (no worker)."""
