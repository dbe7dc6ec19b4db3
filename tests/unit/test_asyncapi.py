"""docs/asyncapi.yaml, the subscriber-facing API of the expiry events, is a valid AsyncAPI 3.0 document
and says what schemas/events.py does: the same types, subjects, schemas and CloudEvents headers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devcluster import binaries
from schemas.events import (
    DISCOVERED,
    TOKENS,
    CertificateEvent,
    CertificateFacts,
    cloud_event,
    event_subject,
    event_type,
)

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCS / "asyncapi.yaml").read_text()))


def test_the_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    schema = json.loads(binaries.asyncapi_schema().read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert [error.message for error in validator.iter_errors(document)] == []
    broken = {**document, "channels": {"x": {"address": 5}}}
    assert list(validator.iter_errors(broken))  # the check can fail


def test_every_event_type_has_its_channel_message_and_schema(document: dict[str, Any]) -> None:
    assert sorted(document["channels"]) == sorted(TOKENS)
    for token in TOKENS:
        channel = document["channels"][token]
        address = channel["address"].format(cluster="c", namespace="ns", objectKind="secret", objectName="n")
        assert address == event_subject("c", "ns", token, "Secret", "n")
        message = document["components"]["messages"][token]
        assert message["title"] == event_type(token)
        assert (DOCS / message["payload"]["$ref"]).resolve().is_file()


def test_the_documented_headers_are_those_every_event_carries(document: dict[str, Any]) -> None:
    headers = document["components"]["schemas"]["cloudEventHeaders"]
    facts = CertificateFacts("ab" * 32)
    event = CertificateEvent("c", "ns", "Secret", "n", "u", "tls.crt", 0, "cc", 30, "Valid", facts)
    sent = cloud_event(DISCOVERED, event, "2026-12-05T00:00:00Z").headers
    assert sorted(headers["required"]) == sorted(sent)
    jsonschema.validate(sent, headers)
