"""Middlewares for observability, each behind its extra.

``machinery_aio.middlewares.opentelemetry`` (``[otel]``) traces every publish and run;
``machinery_aio.middlewares.prometheus`` (``[prometheus]``) counts them.
"""
