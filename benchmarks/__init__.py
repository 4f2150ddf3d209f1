"""Side-by-side benchmark of machinery-aio and other Python task queues (``python -m benchmarks run``)."""
