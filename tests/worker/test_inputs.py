"""Inputs by reference: photos named by http(s) URL or s3:// key, fetched by the workers.

A real HTTP server and a real S3-compatible server (moto) on loopback, which
the service is told to allow (INPUT_ALLOWED_NETWORKS, INPUT_ALLOWED_BUCKETS);
every other private address stays refused.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from shared.training.dataset import list_labelled_images
from testkit.processes import Service, error_of, free_port, running_serve

pytestmark = pytest.mark.model

BUCKET = "photos-in"


class Photos(BaseHTTPRequestHandler):
    served: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/moved.jpg":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        body = self.served.get(self.path.split("?", 1)[0])
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture(scope="module")
def photos(train_dir: Path) -> list[bytes]:
    return [image.path.read_bytes() for image in list_labelled_images(train_dir)[::900][:4]]


@pytest.fixture(scope="module")
def web(photos: list[bytes]) -> Iterator[str]:
    Photos.served = {f"/{i}.jpg": data for i, data in enumerate(photos)}
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Photos)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def s3(photos: list[bytes]) -> Iterator[dict[str, str]]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server._port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="album/3.jpg", Body=photos[3])
    client.put_object(Bucket=BUCKET, Key="trip/day1/0.jpg", Body=photos[0])
    client.put_object(Bucket=BUCKET, Key="trip/day2/1.jpg", Body=photos[1])
    client.put_object(Bucket=BUCKET, Key="trip/day2/", Body=b"")  # a folder's placeholder
    yield env
    server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> Iterator[Service]:
    with running_serve(
        tmp_path_factory.mktemp("inputs"),
        INPUT_ALLOWED_NETWORKS="127.0.0.0/8",
        INPUT_ALLOWED_BUCKETS=BUCKET,
        **s3,
    ) as service:
        yield service


def test_inputs_by_url_and_s3_key_each_end_with_their_own_reason(
    service: Service, web: str
) -> None:
    inputs = [
        {"custom_id": "a", "url": f"{web}/0.jpg"},
        {"custom_id": "b", "url": f"{web}/1.jpg?size=large"},
        {"custom_id": "gone", "url": f"{web}/missing.jpg"},
        {"custom_id": "moved", "url": f"{web}/moved.jpg"},
        {"custom_id": "private", "url": "http://10.255.255.1/x.jpg"},
        {"custom_id": "bucket", "url": f"s3://{BUCKET}/album/3.jpg"},
        {"custom_id": "nokey", "url": f"s3://{BUCKET}/album/none.jpg"},
    ]
    with service.client() as client:
        made = client.post("/jobs", json={"inputs": inputs, "metadata": {"album": "x"}})
        assert made.status_code == 202, made.text
        job = service.wait_job(made.json()["id"])
        assert (job["status"], job["succeeded"], job["failed"]) == ("partially_succeeded", 3, 4)
        assert job["metadata"] == {"album": "x"}
        items = client.get(f"/jobs/{job['id']}/results").json()["items"]
        by_id = {item["custom_id"]: item for item in items}
        assert [item["custom_id"] for item in items] == [i["custom_id"] for i in inputs]
        for ok in ("a", "b", "bucket"):
            assert by_id[ok]["status"] == "succeeded", by_id[ok]
            assert by_id[ok]["class"] is not None
        assert by_id["a"]["filename"] == "0.jpg"
        assert by_id["b"]["source_url"] == f"{web}/1.jpg?size=large"
        assert "HTTP 404" in by_id["gone"]["error"]
        assert "redirects are not followed" in by_id["moved"]["error"]
        assert "not a public address" in by_id["private"]["error"]
        assert "INPUT_ALLOWED_NETWORKS" in by_id["private"]["error"]
        assert "no such key" in by_id["nokey"]["error"]
        rows = list(
            csv.DictReader(io.StringIO(client.get(f"/jobs/{job['id']}/results?format=csv").text))
        )
        assert [row["custom_id"] for row in rows] == [i["custom_id"] for i in inputs]

        # The failed ones are fetched again by a retry.
        retry = client.post(f"/jobs/{job['id']}/retry").json()
        assert retry["total"] == 4
        again = client.get(f"/jobs/{retry['id']}/results").json()["items"]
        assert [item["custom_id"] for item in again] == ["gone", "moved", "private", "nokey"]


def test_a_jsonl_manifest_names_inputs_too(service: Service, web: str) -> None:
    lines = [{"custom_id": f"photo-{i}", "url": f"{web}/{i}.jpg"} for i in range(3)]
    manifest = "\n".join(json.dumps(line) for line in lines).encode()
    with service.client() as client:
        made = client.post("/jobs", files={"manifest": ("inputs.jsonl", manifest)})
        assert made.status_code == 202, made.text
        job = service.wait_job(made.json()["id"])
        assert (job["status"], job["succeeded"]) == ("succeeded", 3)
        # Parsed in memory, so bounded on its own, far below an upload's limit.
        huge = b'{"url": "http://a/1.jpg"}\n' * (64 * 1024 * 1024 // 26 + 1)
        refused = client.post("/jobs", files={"manifest": ("inputs.jsonl", huge)})
        assert "a manifest is at most" in error_of(refused, 413)["message"]


def test_a_bucket_prefix_is_one_job_of_every_object_under_it(service: Service) -> None:
    with service.client() as client:
        made = client.post("/jobs", json={"source": f"s3://{BUCKET}/trip/"})
        assert made.status_code == 202, made.text
        job = service.wait_job(made.json()["id"])
        assert (job["status"], job["succeeded"]) == ("succeeded", 2)
        items = client.get(f"/jobs/{job['id']}/results").json()["items"]
        assert [item["custom_id"] for item in items] == ["day1/0.jpg", "day2/1.jpg"]
        empty = error_of(client.post("/jobs", json={"source": f"s3://{BUCKET}/none/"}), 422)
        assert "no objects under" in empty["message"]
        elsewhere = error_of(client.post("/jobs", json={"source": "s3://other/x/"}), 422)
        assert "INPUT_ALLOWED_BUCKETS" in elsewhere["message"]


def test_the_python_client_sends_references_and_follows_the_stream(
    service: Service, web: str
) -> None:
    from client import Client

    seen: list[int] = []
    with Client(service.url) as client:
        job = client.submit_references([{"custom_id": "sea-1", "url": f"{web}/2.jpg"}])
        done = client.wait(job, on_progress=lambda j: seen.append(j.done), timeout=120)
        (result,) = client.results(done)
    assert (done.status, result.custom_id, result.status) == ("succeeded", "sea-1", "succeeded")
    assert seen[-1] == 1  # the last state the stream sent is the final one


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"inputs": []}, "no inputs"),
        ({"inputs": [{"url": "ftp://x/y.jpg"}]}, "inputs[0].url must be http(s)"),
        ({"inputs": [{"url": "s3://elsewhere/k.jpg"}]}, "INPUT_ALLOWED_BUCKETS"),
        (
            {
                "inputs": [
                    {"url": "http://a/1.jpg", "custom_id": "x"},
                    {"url": "http://a/2.jpg", "custom_id": "x"},
                ]
            },
            "custom_id 'x' is used twice",
        ),
        ({"inputs": [{"url": "http://a/1.jpg", "colour": "red"}]}, "unknown field"),
        ({"inputs": [{"url": "http://u:p@a/1.jpg"}]}, "credentials"),
        ({"urls": ["http://a/1.jpg"]}, '"inputs"'),
    ],
)
def test_bad_inputs_are_refused_before_any_job(
    service: Service, body: dict[str, Any], needle: str
) -> None:
    with service.client() as client:
        error = error_of(client.post("/jobs", json=body), 422)
        assert needle in error["message"]
