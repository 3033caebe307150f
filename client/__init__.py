"""A typed Python client for the service: submit, wait with progress, fetch results.

    from client import Client

    with Client("http://127.0.0.1:9696", api_key="ick_…") as service:
        job = service.submit(["photos/", "more.zip"])
        job = service.wait(job, on_progress=lambda j: print(j.done, "/", j.total))
        for item in service.results(job):
            print(item.filename, item.label, item.confidence)

It needs only httpx; the `intel-classifier submit/status/results/cancel`
commands are built on it.
"""

from client.api import Client, ClientError
from client.models import ItemResult, Job

__all__ = ["Client", "ClientError", "ItemResult", "Job"]
