"""The HTTP endpoint every service exposes: /healthz, /readyz and /metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class Health:
    """Liveness is a heartbeat from the event loop; readiness is set by the service once it is synced."""

    def __init__(self, stale_after_seconds: float = 30.0) -> None:
        self.ready = False
        self.reason = "starting"
        self._beat = time.monotonic()
        self._stale_after = stale_after_seconds
        self._parts: dict[str, Health] = {}
        self._whole: Health | None = None
        # HTML pages besides the endpoints (the exporter's inventory): (path, query) -> page or None.
        self.pages: Callable[[str, dict[str, list[str]]], bytes | None] | None = None

    def serve_pages(self, pages: Callable[[str, dict[str, list[str]]], bytes | None]) -> None:
        """Serve ``pages`` on this process's HTTP endpoint (of the whole process, for a part)."""
        root = self
        while root._whole is not None:
            root = root._whole
        root.pages = pages

    def part(self, name: str) -> Health:
        """The health of one part of a process that runs several services (``certcheck all``): the
        process is ready once every part is, and says which are not."""
        part = Health(self._stale_after)
        part._whole = self
        self._parts[name] = part
        self._from_parts()
        return part

    def beat(self) -> None:
        self._beat = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self._beat < self._stale_after

    def set_ready(self, ready: bool, reason: str = "") -> None:
        self.ready, self.reason = ready, reason
        if self._whole is not None:
            self._whole._from_parts()

    def _from_parts(self) -> None:
        waiting = [
            f"{name}: {part.reason or 'not ready'}" for name, part in self._parts.items() if not part.ready
        ]
        self.ready, self.reason = not waiting, "; ".join(waiting)


def serve_http(
    health: Health, host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/metrics":
                # ?name[]=...: only those families, as prometheus_client's own handler allows (a
                # poller of one counter need not have every certificate's series rendered)
                names = parse_qs(query).get("name[]")
                chosen = registry.restricted_registry(names) if names else registry
                self._reply(200, generate_latest(chosen), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = health.alive
                self._reply(200 if ok else 503, b"ok\n" if ok else b"event loop stalled\n")
            elif path == "/readyz":
                ok = health.ready
                self._reply(200 if ok else 503, f"{'ok' if ok else health.reason}\n".encode())
            elif health.pages is not None and (page := health.pages(path, parse_qs(query))) is not None:
                self._reply(200, page, "text/html; charset=utf-8")
            else:
                self._reply(404, b"not found\n")

        def _reply(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
