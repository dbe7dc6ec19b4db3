"""POSTing to a receiver over HTTP, for the channels that speak it. Blocking (run in a thread).

Each POST goes to an address the egress policy checked (services/notifier/channels/_egress.py), follows
no redirect and uses no proxy (a proxy would connect where the policy never looked). Errors say whether a
retry can help; none quotes an address, a socket error or a URL's query and credentials: reasons reach
the CertCheck's status and Events, which its author reads.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field

from services.notifier.channels import DeliveryError
from services.notifier.channels._egress import (
    Address,
    DestinationRefused,
    EgressPolicy,
    Resolver,
    checked_addresses,
    system_resolver,
)

TIMEOUT_SECONDS = 10
MAX_ANSWER_BYTES = 1 << 20
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _where(parts: urllib.parse.SplitResult) -> str:
    """The URL without credentials, query or fragment (they may hold secrets)."""
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address; the Host header still names the URL's host."""

    def __init__(self, host: str, port: int, address: Address, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((str(self.address), self.port), self.timeout)


class _PinnedHTTPS(_PinnedHTTP):
    """TLS to the checked address, verified against the URL's host name (SNI too)."""

    def __init__(
        self, host: str, port: int, address: Address, timeout: float, context: ssl.SSLContext
    ) -> None:
        super().__init__(host, port, address, timeout)
        self.context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self.context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass(frozen=True)
class Poster:
    """POSTs under one egress policy."""

    policy: EgressPolicy = field(default_factory=EgressPolicy)
    resolve: Resolver = system_resolver
    timeout: float = TIMEOUT_SECONDS
    tls: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> bytes:
        parts = _valid(url)
        where = _where(parts)
        host = parts.hostname or ""
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        try:
            addresses = checked_addresses(host, port, self.policy, self.resolve)
        except DestinationRefused:
            raise DeliveryError(f"{where}: the destination is not allowed (egress policy)", False) from None
        except (OSError, UnicodeError):
            raise DeliveryError(f"{where}: the host name does not resolve", True) from None
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        status, answer, retry_after = self._first_answer(
            parts.scheme, host, port, addresses, target, body, headers, where
        )
        return _judged(where, status, answer, retry_after)

    def _first_answer(
        self,
        scheme: str,
        host: str,
        port: int,
        addresses: list[Address],
        target: str,
        body: bytes,
        headers: dict[str, str],
        where: str,
    ) -> tuple[int, bytes, str | None]:
        timed_out = False
        for address in addresses:
            connection = (
                _PinnedHTTPS(host, port, address, self.timeout, self.tls)
                if scheme == "https"
                else _PinnedHTTP(host, port, address, self.timeout)
            )
            try:
                connection.request("POST", target, body=body, headers=headers)
                response = connection.getresponse()
                return response.status, response.read(MAX_ANSWER_BYTES), response.getheader("Retry-After")
            except ssl.SSLError:
                raise DeliveryError(f"{where}: the TLS handshake failed", True) from None
            except TimeoutError:
                timed_out = True
            except (OSError, http.client.HTTPException):
                pass
            finally:
                connection.close()
        raise DeliveryError(f"{where}: {'timed out' if timed_out else 'could not connect'}", True)


def _valid(url: str) -> urllib.parse.SplitResult:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise DeliveryError("the URL is not valid", False) from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise DeliveryError("the URL must be http:// or https:// with a host", False)
    if parts.username is not None or parts.password is not None:
        # Never quoted: the URL holds a password.
        raise DeliveryError("the URL carries user:password; put credentials in a Secret instead", False)
    return parts


def _judged(where: str, status: int, answer: bytes, retry_after: str | None) -> bytes:
    if 200 <= status < 300:
        return answer
    if 300 <= status < 400:
        raise DeliveryError(f"{where} answered HTTP {status}: redirects are not followed", False)
    if status == 429:
        raise DeliveryError(f"{where} answered 429 Too Many Requests", True, _retry_after(retry_after))
    if status >= 500 or status == 408:
        raise DeliveryError(f"{where} answered HTTP {status}", True, _retry_after(retry_after))
    raise DeliveryError(f"{where} answered HTTP {status}", False)
