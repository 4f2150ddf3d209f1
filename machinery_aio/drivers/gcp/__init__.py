"""Google Cloud Pub/Sub: the broker (needs the ``gcp`` extra)."""
