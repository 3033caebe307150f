"""The address guard and the signature format, without a network."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from shared.errors import InvalidInput
from shared.webhooks.guard import check_webhook_url, parse_networks
from shared.webhooks.signing import signature_header

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Name resolution is not ours and no DNS server runs here: answer two names."""
    real = socket.getaddrinfo
    answers = {"internal.example": "10.20.30.40", "public.example": "93.184.216.34"}

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answers[host], port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://169.254.169.254/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://224.0.0.1/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://0.0.0.0/", "unspecified"),
        ("ftp://example.com/", "http(s) URL"),
        ("http://internal.example/hook", "resolves to 10.20.30.40, a private"),
    ],
)
def test_non_public_targets_are_refused(url: str, reason: str, fake_dns: None) -> None:
    with pytest.raises(InvalidInput, match=reason.replace("(", r"\(").replace(")", r"\)")):
        check_webhook_url(url, parse_networks(""))


def test_public_targets_and_allowed_networks_pass(fake_dns: None) -> None:
    check_webhook_url("https://public.example/hook", [])
    check_webhook_url("http://127.0.0.1:8000/hook", parse_networks("127.0.0.0/8, ::1/128"))
    check_webhook_url("http://internal.example/hook", parse_networks("10.0.0.0/8"))


def test_every_secret_signs_and_standardwebhooks_verifies_each() -> None:
    body = '{"type":"job.succeeded"}'
    import time

    timestamp = int(time.time())
    header = signature_header([SECRET, OTHER], "msg_1", timestamp, body)
    assert len(header.split(" ")) == 2
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": header,
    }
    for secret in (SECRET, OTHER):
        assert Webhook(secret).verify(body, headers) == {"type": "job.succeeded"}
