"""Providers' own callback authentication: 23 Telecom's HMAC signature, Swift's switch secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from normalizers.base import CallbackRequest
from normalizers.registry import DEFAULT_REGISTRY
from normalizers.swift import PROVIDER as SWIFT
from normalizers.telecom23 import PROVIDER as TELECOM23

NOW = datetime(2026, 2, 13, 10, 30, 5, tzinfo=UTC)
BODY = b'{"message_id":"api_1","status":"DELIVRD"}'
SECRET = "whsec-23"


def telecom23_request(secret: str, stamp: datetime, body: bytes = BODY) -> CallbackRequest:
    timestamp = str(int(stamp.timestamp()))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return CallbackRequest(
        method="POST",
        path="/callbacks/telecom23",
        headers={"X-Webhook-Timestamp": timestamp, "X-Webhook-Signature": f"sha256={digest}"},
        body=body,
    )


def test_telecom23_accepts_its_documented_signature() -> None:
    assert TELECOM23.verify_callback(telecom23_request(SECRET, NOW), SECRET, NOW)


@pytest.mark.parametrize(
    "request_",
    [
        telecom23_request("another-secret", NOW),
        telecom23_request(SECRET, NOW - timedelta(minutes=6)),  # stale
        telecom23_request(SECRET, NOW + timedelta(minutes=6)),  # from the future
        CallbackRequest(method="POST", path="/callbacks/telecom23", body=BODY),  # unsigned
    ],
    ids=["wrong-secret", "stale", "future", "unsigned"],
)
def test_telecom23_refuses_bad_signatures(request_: CallbackRequest) -> None:
    assert not TELECOM23.verify_callback(request_, SECRET, NOW)


def test_telecom23_refuses_a_body_changed_after_signing() -> None:
    signed = telecom23_request(SECRET, NOW)
    tampered = CallbackRequest(
        method="POST",
        path=signed.path,
        headers=signed.headers,
        body=BODY.replace(b"DELIVRD", b"UNDELIV"),
    )

    assert not TELECOM23.verify_callback(tampered, SECRET, NOW)


def test_without_a_secret_signing_is_not_required() -> None:
    unsigned = CallbackRequest(method="POST", path="/callbacks/telecom23", body=BODY)

    for provider in DEFAULT_REGISTRY.values():
        assert provider.verify_callback(unsigned, None, NOW)


@pytest.mark.parametrize(
    ("authorization", "accepted"),
    [
        ("Bearer switch-secret", True),
        ("Basic " + base64.b64encode(b"identity:switch-secret").decode(), True),
        ("Bearer wrong", False),
        ("Basic " + base64.b64encode(b"identity:wrong").decode(), False),
        ("Basic !!!not-base64", False),
        ("", False),
    ],
)
def test_swift_checks_the_switch_secret(authorization: str, accepted: bool) -> None:
    request = CallbackRequest(
        method="POST", path="/callbacks/swift", headers={"Authorization": authorization}, body=b"{}"
    )

    assert SWIFT.verify_callback(request, "switch-secret", NOW) is accepted
