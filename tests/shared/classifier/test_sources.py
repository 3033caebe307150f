from __future__ import annotations

import zipfile
from pathlib import Path

from shared.classifier.sources import count_sources, iter_sources


def test_files_folders_and_zips_expand_in_order(tmp_path: Path) -> None:
    (tmp_path / "dir" / "nested").mkdir(parents=True)
    (tmp_path / "dir" / "b.jpg").write_bytes(b"b")
    (tmp_path / "dir" / "nested" / "c.jpg").write_bytes(b"c")
    (tmp_path / "dir" / ".hidden.jpg").write_bytes(b"h")
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("photos/", b"")
        zf.writestr("photos/one.jpg", b"1")
        zf.writestr("__MACOSX/photos/._one.jpg", b"junk")
        zf.writestr("photos/.DS_Store", b"junk")
        zf.writestr("two.png", b"2")
    single = tmp_path / "single.jpg"
    single.write_bytes(b"s")
    paths = [single, tmp_path / "dir", archive]
    items = list(iter_sources(paths))
    assert [(name.removeprefix(f"{tmp_path}/"), data) for name, data in items] == [
        ("single.jpg", b"s"),
        ("dir/b.jpg", b"b"),
        ("dir/nested/c.jpg", b"c"),
        ("batch.zip/photos/one.jpg", b"1"),
        ("batch.zip/two.png", b"2"),
    ]
    assert count_sources(paths) == len(items)
