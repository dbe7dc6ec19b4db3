"""Local HTTP receivers for notification tests: a server that answers like Slack's Web API, and webhook
endpoints, each scriptable (fail N times, answer 429 with Retry-After, hang) and recording every request."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int = 0  # the status code sent back (0: the connection died first)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    def __init__(self, default: Reply | None = None, host: str = "127.0.0.1") -> None:
        self.default = default or Reply()
        self.script: deque[Reply] = deque()
        self.requests: list[Received] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received = Received(self.path, dict(self.headers.items()), self.rfile.read(length))
                receiver.requests.append(received)
                reply = receiver.script.popleft() if receiver.script else receiver.default
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                    self.wfile.flush()
                    received.answered = reply.status
                except OSError:
                    received.answered = 0

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.host = host
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.answered < 300]

    def close(self) -> None:
        self.server.shutdown()


def slack_ok() -> Reply:
    return Reply(200, b'{"ok": true, "ts": "1.0"}')
