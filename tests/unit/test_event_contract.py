"""The public expiry-event contract: JSON Schemas committed beside the code that match it, CloudEvents
headers as the NATS binding asks, one id per fact, subjects subscribers can filter on."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import msgspec
import pytest

from schemas import events
from schemas.events import (
    DISCOVERED,
    REMOVED,
    ROTATED,
    STATE_CHANGED,
    CertificateEvent,
    CertificateFacts,
    cloud_event,
    event_id,
)

COMMITTED = Path(__file__).resolve().parents[2] / "schemas" / "events" / "v1"
FACTS = CertificateFacts(
    "ab" * 32, "0f", "web.shop", "R3", ["web.shop"], "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z"
)
SEEN = CertificateEvent("prod", "shop", "Secret", "web.tls", "uid-1", "tls.crt", 0, "web", 30, "Valid", FACTS)
TIME = "2026-12-05T10:00:00Z"


def test_the_committed_json_schemas_are_what_the_code_generates() -> None:
    """Regenerate with `python -m schemas.events` after changing schemas/events.py (a new version,
    never an edit of v1, once released)."""
    generated = events.json_schemas()
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == sorted(generated)
    for name, text in generated.items():
        assert (COMMITTED / name).read_text() == text, name


@pytest.mark.parametrize(
    "token,event",
    [
        (DISCOVERED, SEEN),
        (STATE_CHANGED, msgspec.structs.replace(SEEN, state="ExpiringSoon", previous_state="Valid")),
        (
            ROTATED,
            msgspec.structs.replace(
                SEEN, previous_certificate=msgspec.structs.replace(FACTS, fingerprint_sha256="cd" * 32)
            ),
        ),
        (REMOVED, msgspec.structs.replace(SEEN, removed_because="NoLongerSelected")),
    ],
)
def test_every_event_validates_against_its_committed_schema(token: str, event: CertificateEvent) -> None:
    schema = json.loads((COMMITTED / f"{token}.json").read_text())
    jsonschema.validate(json.loads(cloud_event(token, event, TIME).data), schema)


@pytest.mark.parametrize(
    "token,missing",
    [(STATE_CHANGED, "previousState"), (ROTATED, "previousCertificate"), (REMOVED, "removedBecause")],
)
def test_a_schema_refuses_an_event_without_what_its_type_carries(token: str, missing: str) -> None:
    schema = json.loads((COMMITTED / f"{token}.json").read_text())
    with pytest.raises(jsonschema.ValidationError, match=missing):
        jsonschema.validate(json.loads(msgspec.json.encode(SEEN)), schema)


def test_the_headers_are_the_cloudevents_binary_mode_attributes() -> None:
    event = cloud_event(DISCOVERED, SEEN, TIME)
    assert event.subject == "certcheck.v1.events.prod.shop.discovered.secret.web.tls"
    headers = event.headers
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == "dev.certcheck.certificate.discovered.v1"
    assert headers["ce-source"] == "/clusters/prod/namespaces/shop/certchecks/web"
    assert headers["ce-subject"] == "secrets/web.tls/tls.crt/0"
    assert headers["ce-time"] == TIME
    assert headers["ce-datacontenttype"] == headers["Content-Type"] == "application/json"
    assert headers["ce-dataschema"] == "https://certcheck.dev/schemas/events/v1/discovered.json"
    assert headers["ce-id"] == headers["Nats-Msg-Id"] == event_id(DISCOVERED, SEEN)
    assert (
        b"BEGIN" not in event.data and json.loads(event.data)["certificate"]["fingerprintSha256"] == "ab" * 32
    )


def test_a_header_value_outside_printable_ascii_is_percent_encoded() -> None:
    odd = msgspec.structs.replace(SEEN, key="caf\u00e9%.crt")
    assert cloud_event(DISCOVERED, odd, TIME).headers["ce-subject"] == "secrets/web.tls/caf%C3%A9%25.crt/0"


def test_one_fact_has_one_id_and_another_fact_another() -> None:
    again = CertificateEvent(
        "prod", "shop", "Secret", "web.tls", "uid-1", "tls.crt", 0, "web", 30, "Valid", FACTS
    )
    assert event_id(DISCOVERED, again) == event_id(DISCOVERED, SEEN)
    others = [
        event_id(STATE_CHANGED, SEEN),
        event_id(DISCOVERED, msgspec.structs.replace(SEEN, certcheck="other")),
        event_id(DISCOVERED, msgspec.structs.replace(SEEN, object_uid="uid-2")),
        event_id(DISCOVERED, msgspec.structs.replace(SEEN, index=1)),
        event_id(
            DISCOVERED,
            msgspec.structs.replace(
                SEEN, certificate=msgspec.structs.replace(FACTS, fingerprint_sha256="cd" * 32)
            ),
        ),
        event_id(
            STATE_CHANGED, msgspec.structs.replace(SEEN, state="Expired", previous_state="ExpiringSoon")
        ),
    ]
    assert len({event_id(DISCOVERED, SEEN), *others}) == len(others) + 1


def test_an_unknown_type_is_refused() -> None:
    with pytest.raises(ValueError, match="not an event type"):
        cloud_event("renewed", SEEN, TIME)
