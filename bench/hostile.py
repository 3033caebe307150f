"""What crafted requests cost everyone: memory and stalls, measured on real processes.

    python -m bench.hostile [--entries 1500000] [--stalled 25] [--out FILE]

1. crafted archives: the API's peak RSS (VmHWM) growth and answer time for
   archives of `--entries` entries whose end records disagree with their
   directory, and for the honest form of the same archive;
2. deep images: peak RSS growth of the worker's decode step (`preprocess`, in a
   fresh process each) for a 40 MP image of each depth;
3. stalled downloads: with `--stalled` CSV downloads of a 10,000-item job open
   and never read, the latency of GET /jobs, POST /jobs and /readyz (Postgres,
   API keys on).

Each figure is measured against its own baseline in the same run: the honest
archive, the 8-bit image, the same calls with no download open.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from testkit.crafted import CRAFTED_ARCHIVES, DEEP_IMAGES, flat_image, unread_download
from testkit.processes import Service, free_port, service_env
from testkit.resources import fresh_postgres_database, idle_in_transaction


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def archives(entries: int, work: Path) -> dict[str, Any]:
    """Each archive to a fresh API process: answer, time, peak and lasting RSS growth."""
    figures: dict[str, Any] = {}
    for name, make in CRAFTED_ARCHIVES.items():
        data = make(entries)
        folder = Path(tempfile.mkdtemp(dir=work))
        service = Service(service_env(folder), folder, free_port())
        service.migrate()
        process = service.start_api()
        try:
            with service.client(timeout=300) as client:
                client.get("/jobs")  # the first request's imports
                before = peak_rss_mib(process.popen.pid)
                began = time.perf_counter()
                response = client.post("/jobs", files={"file": ("crafted.zip", data)})
                seconds = time.perf_counter() - began
                time.sleep(1)
            figures[name] = {
                "upload_mib": round(len(data) / 2**20, 1),
                "status": response.status_code,
                "message": response.json().get("error", {}).get("message", "")[:160],
                "seconds": round(seconds, 2),
                "peak_rss_growth_mib": round(peak_rss_mib(process.popen.pid) - before, 1),
                "rss_after_mib": round(rss_mib(process.popen.pid), 1),
            }
        finally:
            service.stop()
        print(name, figures[name], file=sys.stderr, flush=True)
    return figures


DECODE = """
import sys
from pathlib import Path
from shared.classifier.preprocessing import preprocess
def hwm():
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) / 1024
data = Path(sys.argv[1]).read_bytes()
before = hwm()
preprocess(data, 'deep', 299, 10**9)
print(hwm() - before)
"""


def deep_images(work: Path) -> dict[str, Any]:
    """The decode step's peak RSS growth for 40 MP images of each depth, each in a fresh process."""
    figures: dict[str, Any] = {}
    for name, (mode, fmt) in DEEP_IMAGES.items():
        path = work / f"deep.{fmt.lower()}"
        path.write_bytes(flat_image(mode, (8000, 5000), fmt, 1000 if mode != "RGB" else 0))
        out = subprocess.run(
            [sys.executable, "-c", DECODE, str(path)], capture_output=True, text=True, check=True
        )
        figures[name] = {
            "file_kib": round(path.stat().st_size / 1024, 1),
            "decode_peak_rss_growth_mib": round(float(out.stdout.strip()), 1),
        }
        print(name, figures[name], file=sys.stderr, flush=True)
    return figures


def _latencies(client: httpx.Client, key: str, rounds: int = 5) -> dict[str, Any]:
    jpeg = flat_image("RGB", (32, 32), "JPEG", 0)
    headers = {"Authorization": f"Bearer {key}"}
    calls: dict[str, Callable[[], httpx.Response]] = {
        "GET /jobs": lambda: client.get("/jobs", headers=headers),
        "POST /jobs": lambda: client.post(
            "/jobs", files={"file": ("a.jpg", jpeg)}, headers=headers
        ),
        "GET /readyz": lambda: client.get("/readyz"),
    }
    figures: dict[str, Any] = {}
    for name, call in calls.items():
        times: list[float] = []
        statuses: list[str] = []
        for _ in range(rounds):
            began = time.perf_counter()
            try:
                statuses.append(str(call().status_code))
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
            times.append(time.perf_counter() - began)
        figures[name] = {"max_s": round(max(times), 3), "statuses": sorted(set(statuses))}
    return figures


def stalled_downloads(stalled: int, work: Path) -> dict[str, Any]:
    # Rows of about 450 bytes: 4.5 MB a download, more than the kernel buffers a socket.
    image = flat_image("RGB", (8, 8), "JPEG", 0)
    names = {f"{'x' * 200}/{'y' * 200}/{i:05d}.jpg": image for i in range(10_000)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in names.items():
            archive.writestr(name, data)
    with fresh_postgres_database() as database_url:
        service = Service(
            service_env(work, DATABASE_URL=database_url, AUTH_ENABLED="true"), work, free_port()
        )
        service.migrate()
        key = service.new_key("bench")
        service.start_api()
        sockets: list[socket.socket] = []
        try:
            with service.client(timeout=60) as client:
                headers = {"Authorization": f"Bearer {key}"}
                job = client.post(
                    "/jobs", files={"file": ("big.zip", buffer.getvalue())}, headers=headers
                ).json()
                idle = _latencies(client, key)
                for _ in range(stalled):
                    sockets.append(
                        unread_download(service.port, f"/jobs/{job['id']}/results?format=csv", key)
                    )
                time.sleep(15)  # every download has filled its buffers and waits on its client
                held = idle_in_transaction(database_url)
                busy = _latencies(client, key)
                busy["connections idle in transaction"] = held
        finally:
            for sock in sockets:
                sock.close()
            service.stop()
    figures = {"idle": idle, f"{stalled} stalled downloads": busy}
    print(figures, file=sys.stderr, flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_500_000)
    parser.add_argument("--stalled", type=int, default=25)
    parser.add_argument("--only", choices=["archives", "images", "downloads"], default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        if args.only in (None, "archives"):
            results["crafted archives"] = archives(args.entries, work)
        if args.only in (None, "images"):
            results["deep images"] = deep_images(work)
        if args.only in (None, "downloads"):
            results["stalled downloads"] = stalled_downloads(args.stalled, work)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
