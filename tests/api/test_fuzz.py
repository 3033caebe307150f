"""Property-based fuzzing of every endpoint from the OpenAPI schema (schemathesis).

A real API process on SQLite with AUTH_ENABLED, called with a valid key so that
generated requests reach the handlers: no response may be a 500, and every
response (status, headers, body) must match what the schema declares. Bounded by
MAX_EXAMPLES per operation so CI spends well under a minute here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks

from testkit.processes import Service, free_port, service_env

MAX_EXAMPLES = 100
# Not `positive_data_acceptance`: bytes that satisfy the schema are rarely an image,
# and refusing them (415/422) is the service doing its job.
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


def checks_for(case: schemathesis.Case[Any]) -> list[Any]:
    """/readyz answers its declared 503 here on purpose: no worker runs beside this API."""
    if case.path == "/readyz":
        return [check for check in CHECKS if check is not checks.not_a_server_error]
    return CHECKS


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str]]:
    data_dir = tmp_path_factory.mktemp("fuzz")
    env = service_env(
        data_dir, AUTH_ENABLED="true", WEBHOOK_SECRETS="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    )
    service = Service(env, data_dir, free_port())
    service.migrate()
    key = service.new_key("fuzz")
    service.start_api()
    yield service, key
    service.stop()


def served_schema() -> dict[str, Any]:
    """The schema the API serves at /openapi.json (built in-process: it is static)."""
    import tempfile

    from api.app import create_app
    from shared.settings import Settings

    return create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="schema-")))).openapi()


schema = schemathesis.openapi.from_dict(served_schema())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_500_and_every_response_matches_the_schema(
    case: schemathesis.Case[Any], fuzzed: tuple[Service, str]
) -> None:
    service, key = fuzzed
    case.call_and_validate(
        base_url=service.url, headers={"Authorization": f"Bearer {key}"}, checks=checks_for(case)
    )


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_without_a_key_every_answer_is_a_declared_401_or_public(
    case: schemathesis.Case[Any], fuzzed: tuple[Service, str]
) -> None:
    service, _ = fuzzed
    response = case.call_and_validate(base_url=service.url, checks=checks_for(case))
    if case.path not in {"/healthz", "/readyz", "/metrics"}:
        assert response.status_code == 401, (case.method, case.path, response.text)


def test_the_fuzzed_schema_is_the_served_one(fuzzed: tuple[Service, str]) -> None:
    service, _ = fuzzed
    with service.client() as client:
        assert client.get("/openapi.json").json() == served_schema()
