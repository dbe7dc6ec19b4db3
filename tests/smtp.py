"""A real SMTP server for the e-mail channel's tests (aiosmtpd): STARTTLS with a certificate of a test CA,
AUTH LOGIN/PLAIN with one user, every accepted message kept."""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests import pki


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    messages: list[tuple[str, list[str], Message]] = field(default_factory=list)  # from, to, message

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(
            (envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content))
        )
        return "250 OK"


class SmtpServer:
    """On 127.0.0.1; ``trust`` is an SSL context that trusts its certificate (for the name localhost)."""

    def __init__(
        self, directory: Path, user: str = "certcheck", password: str = "s3cret", tls: bool = True
    ) -> None:
        self.mailbox = Mailbox()
        self.port = _free_port()
        kwargs: dict[str, Any] = {"auth_require_tls": tls}
        self.trust = ssl.create_default_context()
        if tls:
            root = pki.ca("smtp test CA")
            key = pki.ec_key()
            cert = pki.issue("localhost", key, root, dns_names=["localhost"])
            (directory / "smtp.crt").write_bytes(pki.pem(cert))
            (directory / "smtp.key").write_bytes(pki.key_pem(key))
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(directory / "smtp.crt", directory / "smtp.key")
            kwargs |= {"tls_context": context, "require_starttls": True}
            self.trust = ssl.create_default_context(cadata=pki.pem(root[0]).decode())

        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
            good = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(),
                password.encode(),
            )
            return AuthResult(
                success=good, handled=False, message=None if good else "535 5.7.8 Authentication failed"
            )

        self.controller = Controller(
            self.mailbox, hostname="127.0.0.1", port=self.port, authenticator=authenticate, **kwargs
        )
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()
