"""The job routes' parsing: form strings to the values services take."""

from __future__ import annotations

import io

import pytest
from fastapi import UploadFile

from api.forms import job_fields, job_uploads, model_name, one_image
from shared.errors import InvalidInput, LimitExceeded
from tests.conftest import image_bytes, zip_bytes


def part(name: str, data: bytes) -> UploadFile:
    return UploadFile(io.BytesIO(data), filename=name)


def test_fields_become_values_services_take() -> None:
    fields = job_fields(
        1024,
        webhook_url="https://example.org/hook",
        webhook_events=" job.progress, ,job.started",
        metadata='{"batch": 7}',
    )
    assert fields.webhook_url == "https://example.org/hook"
    assert fields.webhook_events == ["job.progress", "job.started"]
    assert fields.metadata == {"batch": 7}
    empty = job_fields(1024, webhook_url="", webhook_events=None, metadata="")
    assert (empty.webhook_url, empty.webhook_events, empty.metadata) == (None, [], {})


def test_a_field_over_its_limit_names_the_setting() -> None:
    with pytest.raises(LimitExceeded, match="MAX_FORM_FIELD_BYTES"):
        job_fields(8, webhook_url=None, webhook_events=None, metadata='{"long": "value"}')


def test_metadata_must_be_a_json_object() -> None:
    with pytest.raises(InvalidInput, match="metadata"):
        job_fields(1024, webhook_url=None, webhook_events=None, metadata="[1, 2]")


def test_uploads_are_required_and_words_say_which_field() -> None:
    with pytest.raises(InvalidInput, match="multipart field `file`"):
        job_uploads(None, None)
    uploads = job_uploads(part("a.png", image_bytes()), [part("b.zip", b"PK")])
    assert [u.filename for u in uploads] == ["a.png", "b.zip"]


def test_predict_takes_one_image_and_refuses_an_archive() -> None:
    with pytest.raises(InvalidInput, match="multipart field `file`"):
        one_image(None)
    with pytest.raises(InvalidInput, match="send archives to POST /jobs"):
        one_image(part("photos.jpg", zip_bytes({"a.png": image_bytes()})))
    assert one_image(part("a.png", image_bytes())).filename == "a.png"


def test_a_model_name_is_short_and_printable_before_any_lookup() -> None:
    assert model_name(None) is None
    assert model_name("") is None
    assert model_name("b640abfba5e8-int8") == "b640abfba5e8-int8"
    for hostile in ("x" * 65, "v1\x00", "v1\n"):
        with pytest.raises(InvalidInput, match="at most 64 printable characters"):
            model_name(hostile)
