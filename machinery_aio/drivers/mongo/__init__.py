"""The MongoDB result backend (``mongodb://``, ``mongodb+srv://``; the ``mongo`` extra)."""
