"""A message's body must speak of what its subject names (the subject is what NATS permissions
guard), and a result may change only certcheck's own annotations in its own namespace."""

from __future__ import annotations

import pytest

from schemas import subjects
from schemas.messages import (
    AnnotationCleanup,
    AnnotationPatch,
    CertCheckRemoved,
    CertCheckStatus,
    Due,
    EvaluationResult,
    EventIntent,
    ObjectDeleted,
    SecretObserved,
)
from services.domain.provenance import due_refusal, event_refusal, object_refusal, result_refusal

OURS = {"certcheck.dev/state": "Valid", "certcheck.dev/not-after": None}


def result(namespace: str, name: str, *patches: AnnotationPatch) -> EvaluationResult:
    status = CertCheckStatus()
    return EvaluationResult(namespace, name, "u", 1, "", 1, status, True, list(patches))


def patch(namespace: str, name: str, annotations: dict[str, str | None]) -> AnnotationPatch:
    return AnnotationPatch(namespace, name, "u", annotations)


def test_a_result_for_the_certcheck_its_subject_names_is_admitted() -> None:
    subject = subjects.result_subject("shop", "web.tls")  # a name with dots spans tokens
    assert result_refusal(subject, result("shop", "web.tls", patch("shop", "s", OURS))) is None
    assert result_refusal(subject, CertCheckRemoved("shop", "web.tls", "u", 1)) is None


@pytest.mark.parametrize(
    "body,why",
    [
        (result("bank", "web"), "a result for bank/web does not match its subject's shop/web"),
        (result("shop", "other"), "a result for shop/other does not match its subject's shop/web"),
        (CertCheckRemoved("bank", "web", "u", 1), "a result for bank/web does not match"),
        (result("shop", "web", patch("bank", "vault", OURS)), "an annotation patch for bank/vault"),
        (
            result("shop", "web", patch("shop", "s", {"certcheck.dev/state": "x", "kubectl.io/evil": "1"})),
            "names keys outside certcheck.dev/: kubectl.io/evil",
        ),
        (
            result("shop", "web", patch("shop", "s", {"keystore.certcheck.dev/password-secret": None})),
            "keystore.certcheck.dev/password-secret",
        ),
    ],
)
def test_a_result_that_does_not_match_its_subject_is_refused_saying_why(body: object, why: str) -> None:
    refusal = result_refusal(subjects.result_subject("shop", "web"), body)  # type: ignore[arg-type]
    assert refusal is not None and why in refusal


def test_a_cleanup_must_name_the_secret_of_its_subject_and_only_our_keys() -> None:
    subject = subjects.cleanup_subject("shop", "s")
    assert result_refusal(subject, AnnotationCleanup(1, patch("shop", "s", OURS))) is None
    assert result_refusal(subject, AnnotationCleanup(1, patch("shop", "t", OURS))) is not None
    assert result_refusal(subject, AnnotationCleanup(1, patch("shop", "s", {"app": None}))) is not None
    # A cleanup on a result subject (or the reverse) is refused too.
    cleanup = AnnotationCleanup(1, patch("shop", "s", OURS))
    assert result_refusal(subjects.result_subject("shop", "s"), cleanup)
    assert result_refusal(subject, result("shop", "s"))


def test_an_event_is_written_only_in_the_namespace_its_subject_names() -> None:
    intent = EventIntent("shop", "v1", "Secret", "s", "u", "Warning", "Expired", "m", "k1")
    assert event_refusal(subjects.kube_event_subject("shop", "k1"), intent) is None
    refusal = event_refusal(subjects.kube_event_subject("bank", "k1"), intent)
    assert refusal == "an Event for namespace shop on a subject of namespace bank"


def test_an_object_must_be_the_kind_namespace_and_name_its_subject_names() -> None:
    secret = SecretObserved(namespace="shop", name="s", uid="u", resource_version="1", type="Opaque")
    subject = subjects.object_subject(3, subjects.KIND_SECRET, "shop", "s")
    assert object_refusal(subject, secret) is None
    assert object_refusal(subjects.object_subject(3, subjects.KIND_SECRET, "bank", "s"), secret)
    assert object_refusal(subjects.object_subject(3, subjects.KIND_CERTCHECK, "shop", "s"), secret)
    deleted = ObjectDeleted(subjects.KIND_CONFIGMAP, "shop", "s", "u", "2")
    assert object_refusal(subjects.object_subject(3, subjects.KIND_CONFIGMAP, "shop", "s"), deleted) is None
    assert object_refusal(subject, deleted) == "a configmap on a secret subject"
    assert object_refusal("certcheck.v1.objects.secret.shop.s", secret)  # an older layout


def test_a_due_evaluation_must_name_the_certcheck_of_its_subject() -> None:
    fired = Due("shop", "web.tls", "2026-12-05T00:00:00Z")
    assert due_refusal(subjects.due_subject(3, "shop", "web.tls"), fired) is None
    refusal = due_refusal(subjects.due_subject(3, "bank", "web.tls"), fired)
    assert refusal == "a due evaluation of shop/web.tls does not match its subject's bank/web.tls"
    assert due_refusal(subjects.result_subject("shop", "web.tls"), fired) is not None
