"""Celery workers: hold the model, classify queued items in batches across jobs."""
