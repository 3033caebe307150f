"""The web page in a real headless browser (Debian's chromium, driven by Playwright).

A user enters their API key, drops a zip of real photos on the page, watches it
finish and browses the results; the screenshot is kept in ARTIFACTS_DIR
(default `test-artifacts/`).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from client import Client
from shared.classifier.labels import CLASSES
from shared.settings import PROJECT_ROOT
from testkit.processes import Service, running_serve
from tests.conftest import holdout_sample, zip_bytes

pytestmark = pytest.mark.model

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("ARTIFACTS_DIR", PROJECT_ROOT / "test-artifacts"))
# Without these, Chromium reaches for Google's services, which this network refuses.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is required at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def drop(page: Page, name: str, data: bytes) -> None:
    """A real drop event carrying a file, as a drag from the desktop makes."""
    transfer = page.evaluate_handle(
        """([encoded, name]) => {
            const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "application/zip" }));
            return transfer;
        }""",
        [base64.b64encode(data).decode(), name],
    )
    page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})


def test_drop_a_zip_and_browse_every_result(
    page: Page, keyed_service: tuple[Service, str], train_dir: Path
) -> None:
    service, key = keyed_service
    images = holdout_sample(train_dir, 2)
    expected = {f"photos/{CLASSES[i.label]}-{i.path.name}": CLASSES[i.label] for i in images}
    entries = {name: image.path.read_bytes() for name, image in zip(expected, images, strict=True)}
    entries["photos/readme.txt"] = b"not a photo"

    page.goto(service.url)
    page.wait_for_selector("#key-form:not([hidden])")  # this server asks for a key
    page.fill("#api-key", key)
    page.click("#key-form button")
    page.reload()  # the key is kept in the browser
    assert page.input_value("#api-key") == key

    drop(page, "photos.zip", zip_bytes(entries))
    page.wait_for_selector("#results:not([hidden])", timeout=180_000)
    status = page.inner_text("#job-status")
    assert status == f"done: {len(entries) - 1} classified, 1 failed"
    job_id = page.get_attribute("#job-status", "data-job-id")
    rows = page.locator("#rows tr")
    assert rows.count() == len(entries)
    shown = {
        rows.nth(i).locator("td.file").inner_text(): rows.nth(i).locator("td.label").inner_text()
        for i in range(rows.count())
    }
    with Client(service.url, key) as client:  # the page shows exactly what the API says
        answers = {r.filename: r.label or r.status for r in client.results(str(job_id))}
    assert shown == answers
    assert answers["photos/readme.txt"] == "failed"
    right = sum(answers[name] == label for name, label in expected.items())
    assert right >= len(expected) - 2  # the model is 92 % accurate on held-out images
    # Thumbnails come from the dropped zip, read in the browser.
    page.wait_for_function(
        """[...document.querySelectorAll('#rows td.thumb img')]
            .filter((image) => image.complete && image.naturalWidth > 0).length >= 12"""
    )

    page.select_option("#filter", "forest")
    filtered = page.locator("#rows tr")
    assert filtered.count() == sum(label == "forest" for label in answers.values()) > 0
    assert set(filtered.locator("td.label").all_inner_texts()) == {"forest"}
    page.select_option("#filter", "")
    page.select_option("#sort", "confidence-desc")
    bars = page.locator("#rows .pct").all_inner_texts()
    values = [float(text.rstrip("%")) for text in bars]
    assert values == sorted(values, reverse=True)

    with page.expect_download() as download:
        page.click("#download")
    csv_text = Path(download.value.path()).read_text()
    assert csv_text.splitlines()[0].startswith("filename,status,class,confidence")
    assert len(csv_text.splitlines()) == len(entries) + 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page.png"), full_page=True)


def test_errors_are_shown_in_the_api_words(page: Page, keyed_service: tuple[Service, str]) -> None:
    service, _ = keyed_service
    page.goto(service.url)
    page.evaluate("localStorage.clear()")
    drop(page, "photos.zip", zip_bytes({"a.txt": b"x"}))
    page.wait_for_selector("#error:not([hidden])")
    assert page.text_content("#error") == (
        "this server requires an API key: send `Authorization: Bearer <key>` "
        "Enter an API key above."
    )


@pytest.fixture(scope="module")
def open_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """`serve` as `make run` starts it: no keys."""
    with running_serve(tmp_path_factory.mktemp("open")) as service:
        yield service


@pytest.mark.parametrize(
    ("device", "width", "height"),
    [("small-phone", 360, 740), ("phone", 390, 844), ("desktop", 1280, 900)],
)
def test_the_page_fits_every_width(
    browser: Browser,
    open_service: Service,
    train_dir: Path,
    device: str,
    width: int,
    height: int,
) -> None:
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    images = holdout_sample(train_dir, 1)
    long_folder = "holiday-2026/a-folder-name-long-enough-to-overflow-any-phone"
    entries = {f"{long_folder}/{i.path.name}": i.path.read_bytes() for i in images}
    entries[f"{long_folder}/notes.txt"] = b"not a photo"
    try:
        page.goto(open_service.url)
        assert page.get_attribute("link[rel=icon]", "href") == "/favicon.ico"
        assert page.request.get(f"{open_service.url}/favicon.ico").ok
        page.wait_for_timeout(300)  # the key probe has answered
        assert page.is_hidden("#key-form")  # this server needs no key: no key box

        drop(page, "photos.zip", zip_bytes(entries))
        page.wait_for_selector("#results:not([hidden])", timeout=180_000)
        assert page.inner_text("#job-status") == f"done: {len(images)} classified, 1 failed"
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        first = page.locator("#rows td.file").first
        assert (first.get_attribute("title") or "").startswith(long_folder)
        # The name is cut with an ellipsis on one line, not wrapped a letter a line.
        assert first.evaluate("(cell) => cell.scrollWidth > cell.clientWidth")
        bar = page.locator("#job-bar").bounding_box()
        assert bar is not None
        # Full width: a phone's bar spans the page (1 rem margins), not a 45 px pill.
        assert bar["width"] >= (900 if device == "desktop" else width - 2 * 16) - 2
        # Each classified row also names the runner-up class and its probability.
        seconds = page.locator("#rows .second").all_inner_texts()
        assert len(seconds) == len(images)
        assert all(re.fullmatch(r"then [a-z]+ \d+\.\d%", text) for text in seconds), seconds
        # The drop zone folded into a bar naming the job, whose link reopens it.
        assert page.is_hidden("#dropzone")
        job_id = page.get_attribute("#job-status", "data-job-id")
        link = page.locator("#job-link")
        assert (link.inner_text(), link.get_attribute("href")) == (job_id, f"/?job={job_id}")
        assert page.url.endswith(f"/?job={job_id}")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"page-{device}.png"), full_page=True)
        rows = page.locator("#rows tr").count()

        page.goto(f"{open_service.url}/?job={job_id}")  # the link, opened later
        page.wait_for_selector("#results:not([hidden])", timeout=60_000)
        assert page.inner_text("#job-status") == f"done: {len(images)} classified, 1 failed"
        assert page.locator("#rows tr").count() == rows
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

        page.click("#new-batch")  # back to an empty page, ready for the next drop
        assert page.is_visible("#dropzone")
        assert page.is_hidden("#results")
        assert page.is_hidden("#batch-bar")
        assert page.evaluate("location.search") == ""
    finally:
        context.close()


def test_an_error_leaves_no_stale_bars(page: Page, open_service: Service) -> None:
    page.goto(open_service.url)
    drop(page, "notes.zip", zip_bytes({"a.txt": b"x"}))
    page.wait_for_selector("#error:not([hidden])")
    assert "no images" in (page.text_content("#error") or "")
    assert page.is_hidden("#progress")
