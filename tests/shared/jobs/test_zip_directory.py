"""The zip directory is bounded while zipfile reads it, whatever the end records claim."""

from __future__ import annotations

import io
import zipfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.errors import LimitExceeded
from shared.jobs.zip_directory import open_archive
from testkit.crafted import CRAFTED_ARCHIVES, EOCD, ZIP64_EOCD, ZIP64_LOCATOR, honest_archive

LIMIT = 50
DIRECTORY_CAP = LIMIT * 1024


class ReadRecorder(io.BytesIO):
    """Remembers the largest single read zipfile made of it."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.largest = max(self.largest, len(data))
        return data


def opened(data: bytes) -> tuple[int | Exception, int]:
    """(entries zipfile listed, or what it raised; the largest read of the upload)."""
    stream = ReadRecorder(data)
    try:
        archive = open_archive(
            stream, "crafted.zip", max_entries=LIMIT, max_directory_bytes=DIRECTORY_CAP
        )
    except Exception as exc:
        return exc, stream.largest
    with archive:
        return len(archive.infolist()), stream.largest


@pytest.mark.parametrize("form", sorted(CRAFTED_ARCHIVES))
def test_every_form_over_the_limit_is_refused_by_its_real_directory(form: str) -> None:
    outcome, largest = opened(CRAFTED_ARCHIVES[form](LIMIT + 1))
    if form == "end records claim one entry":  # zipfile looks where the records say: no directory
        assert isinstance(outcome, zipfile.BadZipFile)
    else:
        assert isinstance(outcome, LimitExceeded)
        assert f"more than the {LIMIT} entries allowed (MAX_ZIP_ENTRIES)" in outcome.message
    assert largest <= DIRECTORY_CAP


@pytest.mark.parametrize("form", sorted(set(CRAFTED_ARCHIVES) - {"end records claim one entry"}))
def test_a_huge_directory_is_refused_before_zipfile_reads_it(form: str) -> None:
    outcome, largest = opened(CRAFTED_ARCHIVES[form](20_000))  # about 1 MB of records
    assert isinstance(outcome, LimitExceeded)
    assert "central directory of" in outcome.message
    assert largest <= 70_000  # the end records' tail, never the directory


def test_an_archive_at_the_limit_opens() -> None:
    assert opened(honest_archive(LIMIT))[0] == LIMIT


def _tail(data: bytes) -> tuple[bytes, bytes]:
    return data[: -EOCD.size], data[-EOCD.size :]


ENTRY_COUNTS = st.integers(0, 2**16 - 1)
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


@st.composite
def disagreeing_archives(draw: st.DrawFn) -> bytes:
    """A real directory of 1..200 entries under end records with fields drawn at random."""
    count = draw(st.integers(1, 200))
    body, _ = _tail(honest_archive(count))
    end = EOCD.pack(
        b"PK\x05\x06",
        0,
        0,
        draw(ENTRY_COUNTS),
        draw(ENTRY_COUNTS),
        draw(st.one_of(U32, st.just(len(body)))),
        draw(st.one_of(U32, st.just(0xFFFFFFFF))),
        0,
    )
    zip64 = b""
    if draw(st.booleans()):
        record = ZIP64_EOCD.pack(
            b"PK\x06\x06", 44, 45, 45, 0, 0, draw(U64), draw(U64), draw(U64), draw(U64)
        )
        locator_offset = draw(st.one_of(U64, st.integers(0, len(body) + 56)))
        decoy = record if draw(st.booleans()) else b""
        zip64 = decoy + record + ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, locator_offset, 1)
    if draw(st.booleans()):  # the signature again, somewhere in the end record's fields
        at = draw(st.integers(4, EOCD.size - 4))
        end = end[:at] + b"PK\x05\x06" + end[at + 4 :]
    return body + zip64 + end


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(data=disagreeing_archives())
def test_records_that_disagree_never_list_more_than_the_limit(data: bytes) -> None:
    outcome, largest = opened(data)
    if isinstance(outcome, int):
        assert outcome <= LIMIT
    assert largest <= max(DIRECTORY_CAP, 70_000)


@settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)
@given(count=st.integers(LIMIT + 1, 400), flips=st.lists(st.integers(0, 40), max_size=3))
def test_directories_over_the_limit_are_refused_however_the_tail_is_damaged(
    count: int, flips: list[int]
) -> None:
    data = bytearray(honest_archive(count))
    for back in flips:  # damage bytes of the end record's fields, not its signature
        data[-1 - back % (EOCD.size - 4)] ^= 0xFF
    outcome, _ = opened(bytes(data))
    assert not isinstance(outcome, int) or outcome <= LIMIT
