"""The Memcache result backend (``memcache://h1:11211,h2:11211``; the ``memcache`` extra)."""
