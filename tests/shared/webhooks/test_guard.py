"""The address guard and the signature format, without a network."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from shared.errors import InvalidInput
from shared.webhooks.guard import (
    check_webhook_url,
    embedded_ipv4,
    loggable_url,
    parse_networks,
    refusal,
)
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
        if host == "six-to-four.example":  # loopback, as 6to4
            return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("2002:7f00:1::", port, 0, 0))]
        if host == "no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
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
        ("http://internal.example/hook", "does not resolve to public addresses only"),
        ("http://six-to-four.example/hook", "does not resolve to public addresses only"),
        ("http://[2002:7f00:1::]/", "loopback (carried inside an IPv6 address)"),
        ("http://[2002:a9fe:a9fe::]/", "link-local (cloud metadata lives here) (carried inside"),
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "reserved"),
        ("http://user:pw@public.example/", "must not carry credentials"),
    ],
)
def test_non_public_targets_are_refused(url: str, reason: str, fake_dns: None) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_webhook_url(url, parse_networks(""))
    assert reason in refused.value.message
    # What a name resolves to is never said: callers could map the internal DNS with it.
    for address in ("10.20.30.40", "2002:7f00"):
        assert "example" not in url or address not in refused.value.message


def test_an_unknown_name_is_refused_in_the_same_words_as_a_private_one(fake_dns: None) -> None:
    messages = []
    for host in ("internal.example", "no-such-host.invalid"):
        with pytest.raises(InvalidInput) as refused:
            check_webhook_url(f"http://{host}/", [])
        messages.append(refused.value.message.replace(host, "HOST"))
    assert messages[0] == messages[1]


@pytest.mark.parametrize(
    ("address", "inner"),
    [
        ("::ffff:127.0.0.1", ["127.0.0.1"]),
        ("::127.0.0.1", ["127.0.0.1"]),
        ("2002:7f00:1::", ["127.0.0.1"]),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", ["65.54.227.120", "127.0.0.1"]),
        ("64:ff9b::7f00:1", ["127.0.0.1"]),
        ("64:ff9b:1::a9fe:a9fe", ["169.254.169.254"]),
        ("2606:4700::1111", []),
    ],
)
def test_ipv4_inside_ipv6_forms_is_found(address: str, inner: list[str]) -> None:
    assert [str(a) for a in embedded_ipv4(ipaddress.IPv6Address(address))] == inner


def test_each_embedded_loopback_is_refused_by_its_ipv4() -> None:
    for form in ("2002:7f00:1::", "2001:0:4136:e378:8000:63bf:80ff:fffe", "64:ff9b::7f00:1"):
        assert refusal(ipaddress.IPv6Address(form)) is not None, form
    assert refusal(ipaddress.IPv6Address("2002:808:808::1")) is None  # 6to4 of a public address


def test_logged_urls_keep_no_query_or_credentials() -> None:
    url = "https://user:pw@example.com:8443/hook/path?token=secret#frag"
    assert loggable_url(url) == "https://example.com:8443/hook/path"


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
