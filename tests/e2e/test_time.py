"""Time alone flips states: JetStream message schedules re-evaluate a CertCheck at the exact moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from devcluster.certs import make_cert
from tests.conftest import Cluster, wait_for
from tests.e2e.helpers import state_of


def test_certificate_enters_the_threshold_window_on_time_with_nobody_touching_anything(
    cluster: Cluster, namespace: str
) -> None:
    crossing = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    cert, key = make_cert("crossing.test", not_after=crossing + timedelta(days=1))
    cluster.create_tls_secret(namespace, "crossing-tls", cert, key, labels={"app": "crossing"})
    cluster.create_certcheck(namespace, "crossing", {"matchLabels": {"app": "crossing"}}, threshold=1)
    wait_for(lambda: state_of(cluster, namespace, "crossing-tls") == "Valid", what="Valid first")
    assert datetime.now(UTC) < crossing, "the test machine was too slow to observe Valid first"

    wait_for(
        lambda: state_of(cluster, namespace, "crossing-tls") == "ExpiringSoon",
        timeout=20,
        what="ExpiringSoon after the threshold crossing",
    )
    flipped_at = datetime.now(UTC)
    assert flipped_at - crossing < timedelta(seconds=3), f"flipped {flipped_at - crossing} after due"
    # The recorder writes the annotation and the status one after the other: the status follows at once.
    wait_for(
        lambda: cluster.status(namespace, "crossing").get("expiringSoonCount") == 1,
        timeout=3,
        what="the status counting it ExpiringSoon",
    )


def test_zero_day_threshold_goes_expiring_then_expired_on_its_own(cluster: Cluster, namespace: str) -> None:
    not_after = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    cert, key = make_cert("shortlived.test", not_after=not_after)
    cluster.create_tls_secret(namespace, "short-tls", cert, key, labels={"app": "short"})
    cluster.create_certcheck(namespace, "short", {"matchLabels": {"app": "short"}}, threshold=0)
    wait_for(lambda: state_of(cluster, namespace, "short-tls") == "Valid", what="Valid first")

    wait_for(lambda: state_of(cluster, namespace, "short-tls") == "Expired", timeout=20, what="Expired")
    expired_at = datetime.now(UTC)
    assert expired_at - not_after < timedelta(seconds=3)
    events = wait_for(
        lambda: [e.reason for e in cluster.events(namespace, "Secret", "short-tls")] or None,
        what="Expired Event",
    )
    assert "Expired" in events
    # The same result writes the annotations first, then the status.
    status = cluster.wait_status(namespace, "short", expiredCount=1)
    assert status["certificates"][0]["active"] is False


def test_not_yet_valid_certificate_becomes_valid_when_its_time_comes(
    cluster: Cluster, namespace: str
) -> None:
    not_before = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    cert, key = make_cert("future.test", not_after=not_before + timedelta(days=300), not_before=not_before)
    cluster.create_tls_secret(namespace, "future-tls", cert, key, labels={"app": "future"})
    cluster.create_certcheck(namespace, "future", {"matchLabels": {"app": "future"}})
    wait_for(lambda: state_of(cluster, namespace, "future-tls") == "NotYetValid", what="NotYetValid first")
    wait_for(lambda: state_of(cluster, namespace, "future-tls") == "Valid", timeout=20, what="Valid")
    assert datetime.now(UTC) - not_before < timedelta(seconds=3)
