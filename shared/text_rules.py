"""What text the service keeps: the rules every stored string passes, in one place.

Postgres cannot store NUL in text, and an unpaired surrogate is not UTF-8, so
either would fail at the database or when the value is sent back. Fields a
client chose (metadata, webhook URLs) are refused with the reason; names that
only label an upload are kept with such characters replaced.
"""

from __future__ import annotations

import json
import math
from typing import Any

from shared.errors import InvalidInput

MAX_METADATA_DEPTH = 32
REPLACEMENT = "\ufffd"


def unstorable(value: str) -> str | None:
    """Why `value` cannot be stored as it is, or None."""
    if "\x00" in value:
        return "it contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid UTF-8 (an unpaired surrogate)"
    return None


def check_storable(field: str, value: str) -> None:
    reason = unstorable(value)
    if reason:
        raise InvalidInput(f"{field} cannot be stored: {reason}")


def label_text(name: str) -> str:
    """A name kept for display: control characters and invalid UTF-8 become U+FFFD."""
    cleaned = "".join(REPLACEMENT if ord(c) < 32 or ord(c) == 127 else c for c in name)
    return cleaned.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def parse_json_object(field: str, raw: str) -> dict[str, Any]:
    """A JSON object every database can store and every client can read back."""

    def refuse_constant(name: str) -> float:
        raise InvalidInput(f"{field} must be standard JSON: {name} is not a JSON number")

    def finite(text: str) -> float:
        number = float(text)
        if not math.isfinite(number):
            raise InvalidInput(f"{field}: the number {text[:20]} is too large for JSON")
        return number

    try:
        value = json.loads(raw, parse_constant=refuse_constant, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{field} must be a JSON object: {exc.msg}") from exc
    except RecursionError as exc:
        raise InvalidInput(f"{field} is nested deeper than {MAX_METADATA_DEPTH} levels") from exc
    except ValueError as exc:  # an integer too long to convert
        raise InvalidInput(f"{field}: {exc}") from exc
    if not isinstance(value, dict):
        raise InvalidInput(f'{field} must be a JSON object, like {{"batch": "2024-05"}}')
    _check_tree(field, value)
    return value


def _check_tree(field: str, root: dict[str, Any]) -> None:
    """Depth and strings, walked without recursion (the input chose the depth)."""
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list) and depth > MAX_METADATA_DEPTH:
            raise InvalidInput(f"{field} is nested deeper than {MAX_METADATA_DEPTH} levels")
        children: list[Any] = []
        if isinstance(node, dict):
            for key in node:
                check_storable(f"{field} key", key)
            children = list(node.values())
        elif isinstance(node, list):
            children = node
        elif isinstance(node, str):
            check_storable(f"{field} value", node)
        stack.extend(
            (child, depth + 1) for child in children if isinstance(child, dict | list | str)
        )
