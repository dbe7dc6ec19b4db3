"""What the notifier sends: on entering a state, on repeat, on resolution; durations and signatures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from schemas.messages import (
    CertificateStatus,
    NotificationTarget,
    State,
)
from services.notifier import core

NOW = datetime(2026, 6, 1, tzinfo=UTC)
TARGET = NotificationTarget(
    name="t", channels={"slack": {"channel": "#c", "tokenSecretRef": {"name": "s", "key": "k"}}}
)


def entry(state: str, name: str = "web") -> CertificateStatus:
    return CertificateStatus(
        name=name,
        key="tls.crt",
        index=0,
        state=state,
        active=state != "Expired",  # type: ignore[arg-type]
        not_after="2026-06-10T00:00:00Z",
        days_remaining=9,
        subject="web.test",
    )


def test_entering_a_notifying_state_fires_once() -> None:
    notices, seen = core.plan(TARGET, [entry("ExpiringSoon"), entry("Valid", "ok")], {}, NOW)
    assert [(n.secret, n.change) for n in notices] == [("web", "firing")]
    again, _ = core.plan(
        TARGET, [entry("ExpiringSoon"), entry("Valid", "ok")], seen, NOW + timedelta(hours=1)
    )
    assert again == []


def test_a_worse_state_fires_again() -> None:
    _, seen = core.plan(TARGET, [entry("ExpiringSoon")], {}, NOW)
    notices, _ = core.plan(TARGET, [entry("Expired")], seen, NOW)
    assert [(n.state, n.previous_state) for n in notices] == [("Expired", "ExpiringSoon")]


def test_repeat_interval_renotifies_a_lasting_state() -> None:
    target = NotificationTarget(name="t", repeat_interval="24h")
    _, seen = core.plan(target, [entry("Expired")], {}, NOW)
    assert core.plan(target, [entry("Expired")], seen, NOW + timedelta(hours=23))[0] == []
    notices, _ = core.plan(target, [entry("Expired")], seen, NOW + timedelta(hours=24))
    assert [n.change for n in notices] == ["repeat"]


def test_resolved_only_when_asked() -> None:
    _, seen = core.plan(TARGET, [entry("Expired")], {}, NOW)
    assert core.plan(TARGET, [entry("Valid")], seen, NOW)[0] == []
    resolving = NotificationTarget(name="t", send_resolved=True)
    notices, _ = core.plan(resolving, [entry("Valid")], seen, NOW)
    assert [(n.change, n.previous_state) for n in notices] == [("resolved", "Expired")]


def test_states_filter() -> None:
    only_expired = NotificationTarget(name="t", states=["Expired"])
    assert core.plan(only_expired, [entry("ExpiringSoon")], {}, NOW)[0] == []


@pytest.mark.parametrize("text,seconds", [("30s", 30), ("24h", 86400), ("1d12h", 129600), (None, None)])
def test_durations(text: str | None, seconds: int | None) -> None:
    parsed = core.parse_duration(text)
    assert (parsed.total_seconds() if parsed else None) == seconds


def test_bad_duration_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        core.parse_duration("1 day")


def test_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    expected = hmac.new(b"k", b"123.{}", hashlib.sha256).hexdigest()
    assert core.signature(b"k", "123", b"{}") == f"sha256={expected}"


def test_a_configmap_entry_is_its_own_identity_and_says_its_kind() -> None:
    secret = CertificateStatus(name="ca", key="ca.crt", index=0, state=State.EXPIRED, active=False)
    bundle = CertificateStatus(
        name="ca", key="ca.crt", index=0, state=State.EXPIRED, active=False, kind="ConfigMap"
    )
    assert core.entry_id(secret) == "ca/ca.crt[0]" != core.entry_id(bundle) == "ConfigMap/ca/ca.crt[0]"
