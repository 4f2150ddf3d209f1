"""Loggers that never print a password: every record passes through a masking filter."""

from __future__ import annotations

import logging

from .urls import MaskSecretsFilter

__all__ = ["get_logger", "setup_logging"]

_FILTER = MaskSecretsFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with URL passwords masked in its records."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger


def setup_logging(level: int | str = logging.INFO) -> None:
    """Log to stderr with the masking filter on the handler (for the CLI)."""
    handler = logging.StreamHandler()
    handler.addFilter(_FILTER)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
