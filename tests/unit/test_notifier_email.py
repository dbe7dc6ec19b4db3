"""The e-mail channel against a real SMTP server (aiosmtpd): one message per delivery, plain text and
HTML, STARTTLS verified against the host's name, AUTH from a Secret, the egress policy, and failures
that say whether to retry without quoting the server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.messages import CertificateNotice, ExpiryNotification, SecretRef
from services.notifier.channels import Credentials, DeliveryError
from services.notifier.channels._egress import EgressPolicy, parse_networks
from services.notifier.channels.email import Email, EmailTarget
from tests.smtp import SmtpServer

AUTH = SecretRef("smtp-auth")
LOOPBACK = EgressPolicy(parse_networks("127.0.0.0/8"))
NOTIFICATION = ExpiryNotification(
    "delivery-1",
    "shop",
    "web-check",
    "mail",
    30,
    [
        CertificateNotice("web", "tls.crt", 0, "Expired", "firing", not_after="2026-12-01T00:00:00Z"),
        CertificateNotice("api", "tls.crt", 0, "Valid", "resolved", previous_state="ExpiringSoon"),
    ],
)


def resolve_localhost(host: str, port: int) -> list[str]:
    assert host == "localhost"
    return ["127.0.0.1"]


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[SmtpServer]:
    server = SmtpServer(tmp_path)
    yield server
    server.close()


def target(server: SmtpServer, **more: object) -> EmailTarget:
    return EmailTarget(
        ["ops@example.com", "dev@example.com"], "certcheck@example.com", "localhost", server.port, **more
    )  # type: ignore[arg-type]


def channel(server: SmtpServer, policy: EgressPolicy = LOOPBACK) -> Email:
    return Email(policy, resolve_localhost, server.trust)


def login(user: str = "certcheck", password: str = "s3cret\n") -> Credentials:
    return Credentials(secrets={AUTH: {"username": user.encode(), "password": password.encode()}})


def test_one_message_in_plain_text_and_html_over_starttls_with_authentication(smtp: SmtpServer) -> None:
    config = target(smtp, auth_secret_ref=AUTH)
    mail = channel(smtp)
    mail.send(config, mail.render(config, NOTIFICATION), "delivery-1", login())
    [(sender, recipients, message)] = smtp.mailbox.messages
    assert (sender, recipients) == ("certcheck@example.com", ["ops@example.com", "dev@example.com"])
    assert message["Subject"] == "certcheck: 2 certificates in shop (Expired)"
    assert "delivery-1" in message["Message-ID"] and message["X-Certcheck-Delivery"] == "delivery-1"
    plain, rich = (
        part.get_payload(decode=True).decode() for part in message.walk() if not part.is_multipart()
    )
    assert "Expired: Secret shop/web key tls.crt[0], notAfter 2026-12-01T00:00:00Z" in plain
    assert "recovered (was ExpiringSoon): Secret shop/api" in plain
    assert "<li>Expired: Secret shop/web" in rich


def test_a_wrong_password_is_refused_for_good(smtp: SmtpServer) -> None:
    config = target(smtp, auth_secret_ref=AUTH)
    with pytest.raises(DeliveryError) as refused:
        channel(smtp).send(config, b"x", "d", login(password="wrong"))
    assert (str(refused.value), refused.value.retryable) == ("localhost: authentication refused", False)


def test_a_certificate_not_for_the_host_fails_the_handshake(smtp: SmtpServer) -> None:
    untrusting = Email(LOOPBACK, resolve_localhost)  # the system's CAs: the test CA is not among them
    with pytest.raises(DeliveryError) as failed:
        untrusting.send(target(smtp, auth_secret_ref=AUTH), b"x", "d", login())
    assert "TLS handshake failed" in str(failed.value)
    assert smtp.mailbox.messages == []


def test_an_internal_host_is_refused_by_the_egress_policy(smtp: SmtpServer) -> None:
    with pytest.raises(DeliveryError) as refused:
        channel(smtp, EgressPolicy()).send(target(smtp), b"x", "d", Credentials())
    assert not refused.value.retryable and "127.0.0.1" not in str(refused.value)


def test_a_server_without_starttls_is_refused_unless_the_target_allows_plain_text(tmp_path: Path) -> None:
    plain = SmtpServer(tmp_path, tls=False)
    try:
        mail = channel(plain)
        with pytest.raises(DeliveryError) as refused:
            mail.send(target(plain), mail.render(target(plain), NOTIFICATION), "d", Credentials())
        assert "offers no STARTTLS" in str(refused.value) and not refused.value.retryable
        config = target(plain, start_tls=False)
        mail.send(config, mail.render(config, NOTIFICATION), "d", Credentials())
        assert len(plain.mailbox.messages) == 1
    finally:
        plain.close()


def test_a_server_that_is_down_is_worth_retrying() -> None:
    down = EmailTarget(["ops@example.com"], "certcheck@example.com", "localhost", 9)
    with pytest.raises(DeliveryError) as failed:
        Email(LOOPBACK, resolve_localhost).send(down, b"x", "d", Credentials())
    assert failed.value.retryable and "could not connect" in str(failed.value)
