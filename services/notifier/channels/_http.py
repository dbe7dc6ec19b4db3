"""POSTing to a receiver over HTTP, for the channels that speak it. Blocking (run in a thread). Errors say
whether a retry can help; none quotes a URL's query (it may hold credentials)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request

from services.notifier.channels import DeliveryError

TIMEOUT_SECONDS = 10


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: it may hold credentials


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def post(url: str, body: bytes, headers: dict[str, str]) -> bytes:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        status = exc.code
        where = _where(url)
        if status == 429:
            raise DeliveryError(
                f"{where} answered 429 Too Many Requests", True, _retry_after(exc.headers)
            ) from None
        if status >= 500 or status == 408:
            raise DeliveryError(f"{where} answered HTTP {status}", True, _retry_after(exc.headers)) from None
        raise DeliveryError(f"{where} answered HTTP {status}", False) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(f"{_where(url)} unreachable: {reason}", True) from None
