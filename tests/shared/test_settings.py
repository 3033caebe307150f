"""Every setting is documented where operators look for it."""

from __future__ import annotations

from shared.settings import PROJECT_ROOT, Settings


def test_every_setting_has_a_row_in_the_operations_guide() -> None:
    guide = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    undocumented = [
        name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in guide
    ]
    assert undocumented == []
