"""Worker apps that tests start as subprocesses."""
