"""E-mail over SMTP: one message per delivery (the certificates that changed together), plain text and
HTML, STARTTLS required unless the target turns it off, AUTH with a username and password from a Secret.

The SMTP host is a CertCheck author's, so it is resolved once and checked by the egress policy like a
webhook's, and the connection goes to the checked address; STARTTLS still verifies the host's name.
"""

from __future__ import annotations

import html
import smtplib
import ssl
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid

import msgspec

from schemas.messages import ExpiryNotification, SecretRef
from services.common.settings import Settings
from services.notifier.channels import CredentialRef, Credentials, DeliveryError
from services.notifier.channels._egress import (
    DestinationRefused,
    EgressPolicy,
    Resolver,
    checked_addresses,
    parse_networks,
    system_resolver,
)

TIMEOUT_SECONDS = 15
SHOWN = 50


class EmailTarget(msgspec.Struct, frozen=True, rename="camel"):
    """A target's ``email`` settings."""

    to: list[str]
    from_: str = msgspec.field(name="from")
    host: str
    port: int = 587
    start_tls: bool = msgspec.field(default=True, name="startTLS")
    auth_secret_ref: SecretRef | None = None  # keys ``username`` and ``password``


def _line(notice_state: str, where: str, not_after: str | None, days: int | None, reason: str | None) -> str:
    when = f", notAfter {not_after}" if not_after else ""
    left = f" ({days} days left)" if days is not None and days >= 0 else ""
    return f"{notice_state}: {where}{when}{left}" + (f": {reason}" if reason else "")


def lines(notification: ExpiryNotification) -> list[str]:
    found = []
    for n in notification.certificates[:SHOWN]:
        state = f"recovered (was {n.previous_state})" if n.change == "resolved" else n.state
        where = f"{n.kind} {notification.namespace}/{n.secret} key {n.key}[{n.index}]"
        found.append(_line(state, where, n.not_after, n.days_remaining, n.reason))
    if len(notification.certificates) > SHOWN:
        found.append(f"... and {len(notification.certificates) - SHOWN} more")
    return found


def message(config: EmailTarget, notification: ExpiryNotification) -> EmailMessage:
    states = sorted({n.state for n in notification.certificates if n.change != "resolved"})
    count = len(notification.certificates)
    mail = EmailMessage(policy=SMTP_POLICY)
    mail["Subject"] = (
        f"certcheck: {count} certificate{'s' if count != 1 else ''} in {notification.namespace}"
        + (f" ({', '.join(states)})" if states else " (resolved)")
    )
    mail["From"] = config.from_
    mail["To"] = ", ".join(config.to)
    mail["Date"] = formatdate(usegmt=True)
    # The same delivery sent again (a retry) has the same Message-ID: mail systems can drop the repeat.
    mail["Message-ID"] = make_msgid(idstring=notification.delivery_id, domain="certcheck.dev")
    mail["X-Certcheck-Delivery"] = notification.delivery_id
    head = f"CertCheck {notification.certcheck} in namespace {notification.namespace}:"
    mail.set_content("\n".join([head, "", *lines(notification)]) + "\n")
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines(notification))
    mail.add_alternative(
        f"<html><body><p>{html.escape(head)}</p><ul>{items}</ul></body></html>", subtype="html"
    )
    return mail


class _PinnedSMTP(smtplib.SMTP):
    """Connected to a checked address; STARTTLS verifies the host's name (smtplib reads ``_host``)."""

    def __init__(self, host: str, timeout: float) -> None:
        super().__init__(timeout=timeout)
        self._host = host


@dataclass(frozen=True)
class Email:
    policy: EgressPolicy = dataclass_field(default_factory=EgressPolicy)
    resolve: Resolver = system_resolver
    tls: ssl.SSLContext = dataclass_field(default_factory=ssl.create_default_context)
    timeout: float = TIMEOUT_SECONDS
    name: str = "email"
    field: str = "email"
    settings_type: type[EmailTarget] = EmailTarget
    defaults: tuple[tuple[str, object], ...] = ()

    def credentials(self, config: EmailTarget) -> list[CredentialRef]:
        return [config.auth_secret_ref] if config.auth_secret_ref else []

    def render(self, config: EmailTarget, notification: ExpiryNotification) -> bytes:
        return message(config, notification).as_bytes()

    def send(self, config: EmailTarget, body: bytes, delivery_id: str, credentials: Credentials) -> None:
        if not config.host or not config.to:
            raise DeliveryError("the e-mail target needs host and to", False)
        try:
            addresses = checked_addresses(config.host, config.port, self.policy, self.resolve)
        except DestinationRefused:
            raise DeliveryError(
                f"{config.host}: the destination is not allowed (egress policy)", False
            ) from None
        except (OSError, UnicodeError):
            raise DeliveryError(f"{config.host}: the host name does not resolve", True) from None
        login = self._login(credentials, config)
        for address in addresses:
            try:
                smtp = _PinnedSMTP(config.host, self.timeout)
                smtp.connect(str(address), config.port)
            except OSError:
                continue  # refused or timed out: the next address
            with smtp:
                self._deliver(smtp, config, body, login)
            return
        raise DeliveryError(f"{config.host}:{config.port}: could not connect", True)

    @staticmethod
    def _login(credentials: Credentials, config: EmailTarget) -> tuple[str, str] | None:
        if config.auth_secret_ref is None:
            return None
        values = credentials.values(config.auth_secret_ref)
        username = values.get("username", b"").decode().strip()
        password = values.get("password", b"").decode().strip()
        if not username or not password:
            raise DeliveryError("the auth Secret needs the keys username and password", False)
        return username, password

    def _deliver(
        self, smtp: smtplib.SMTP, config: EmailTarget, body: bytes, login: tuple[str, str] | None
    ) -> None:
        try:
            smtp.ehlo()
            if config.start_tls:
                if not smtp.has_extn("starttls"):
                    raise DeliveryError(
                        f"{config.host} offers no STARTTLS (startTLS: false allows that)", False
                    )
                smtp.starttls(context=self.tls)
                smtp.ehlo()
            if login is not None:
                smtp.login(*login)
            smtp.sendmail(config.from_, config.to, body)
        except ssl.SSLError:
            raise DeliveryError(f"{config.host}: the TLS handshake failed", True) from None
        except smtplib.SMTPAuthenticationError:
            raise DeliveryError(f"{config.host}: authentication refused", False) from None
        except smtplib.SMTPRecipientsRefused:
            raise DeliveryError(f"{config.host}: every recipient refused", False) from None
        except smtplib.SMTPResponseException as exc:
            # 4xx: try again later; 5xx: a retry will not help. The server's own text is not quoted.
            code = exc.smtp_code
            raise DeliveryError(f"{config.host} answered SMTP {code}", 400 <= code < 500) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{config.host}: SMTP failed ({type(exc).__name__})", True) from None


def channel(settings: Settings) -> Email:
    """SMTP hosts are written by CertCheck authors: public addresses only, and the allowed networks."""
    return Email(EgressPolicy(parse_networks(settings.webhook_allowed_cidrs)))
