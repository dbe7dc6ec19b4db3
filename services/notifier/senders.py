"""Delivering a notification over HTTP: Slack's chat.postMessage and signed webhooks. Blocking (run in
a thread). Errors say whether a retry can help; no message ever contains a token or signing secret."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from services.notifier.core import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature

TIMEOUT_SECONDS = 10
# Slack errors worth retrying; every other `ok: false` is a configuration problem.
SLACK_RETRYABLE = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}


@dataclass
class DeliveryError(Exception):
    reason: str
    retryable: bool
    retry_after: float | None = None

    def __str__(self) -> str:
        return self.reason


def _where(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"  # never the query: it may hold credentials


def _retry_after(headers: object) -> float | None:
    value = getattr(headers, "get", lambda _: None)("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _post(url: str, body: bytes, headers: dict[str, str]) -> bytes:
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


def send_slack(api_url: str, token: str, channel: str, text: str) -> None:
    body = json.dumps({"channel": channel, "text": text, "unfurl_links": False}).encode()
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=utf-8"}
    answer = _post(api_url.rstrip("/") + "/chat.postMessage", body, headers)
    try:
        reply = json.loads(answer)
    except ValueError:
        raise DeliveryError("Slack answered something that is not JSON", True) from None
    if not reply.get("ok"):
        error = str(reply.get("error", "unknown_error"))
        raise DeliveryError(f"Slack refused the message: {error}", error in SLACK_RETRYABLE)


def send_webhook(
    url: str, body: bytes, delivery_id: str, signing_secret: bytes | None, extra_headers: dict[str, str]
) -> None:
    timestamp = str(int(time.time()))
    headers = {
        **extra_headers,
        "Content-Type": "application/json",
        DELIVERY_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
        "User-Agent": "certcheck-notifier",
    }
    if signing_secret is not None:
        headers[SIGNATURE_HEADER] = signature(signing_secret, timestamp, body)
    _post(url, body, headers)
