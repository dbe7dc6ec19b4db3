"""The API server's short requests on kept-alive connections (services/common/kube_http.py), against a
small HTTP/1.1 server on loopback that counts its connections and can drop them."""

from __future__ import annotations

import http.client
import http.server
import socketserver
import ssl
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client

from services.common import kube
from services.common.kube_http import Connections, supported
from tests import pki


@dataclass
class Seen:
    connections: int = 0
    requests: list[tuple[str, str, str, bytes]] = field(default_factory=list)  # method, path, auth, body
    # Per request, in order: "answer", "close after" (answer, then close), "drop" (close, no answer).
    plan: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: Seen

    def setup(self) -> None:
        super().setup()
        with self.seen.lock:
            self.seen.connections += 1

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.seen.lock:
            self.seen.requests.append((self.command, self.path, self.headers.get("authorization", ""), body))
            step = self.seen.plan.pop(0) if self.seen.plan else "answer"
        if step == "drop":
            self.close_connection = True
            return
        answer = b'{"kind":"Status","code":404}' if self.path.endswith("/missing") else b"{}"
        self.send_response(404 if self.path.endswith("/missing") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        self.wfile.flush()
        if step == "close after":  # as an idle timeout would, later: no Connection: close header
            self.close_connection = True

    do_GET = do_PATCH = do_POST = _any


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


@pytest.fixture
def seen() -> Seen:
    return Seen()


def _serve(seen: Seen, context: ssl.SSLContext | None = None) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"seen": seen})
    server = _Server(("127.0.0.1", 0), handler)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scheme = "https" if context is not None else "http"
        host = "localhost" if context is not None else "127.0.0.1"
        yield f"{scheme}://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def server(seen: Seen) -> Iterator[str]:
    yield from _serve(seen)


def _configuration(host: str) -> client.Configuration:
    configuration = client.Configuration(host=host)
    configuration.api_key = {"authorization": "token"}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    return configuration


def test_requests_from_one_thread_share_one_connection(server: str, seen: Seen) -> None:
    connections = Connections(_configuration(server))
    for _ in range(5):
        assert connections.request("PATCH", "/api/v1/x", b"{}", {}) == (200, b"{}")
    assert seen.connections == 1 and len(seen.requests) == 5


def test_each_thread_keeps_its_own_connection(server: str, seen: Seen) -> None:
    connections = Connections(_configuration(server))
    barrier = threading.Barrier(4)

    def twice(_: int) -> None:
        barrier.wait()  # all four at once, each on its own connection
        for _ in range(2):
            assert connections.request("GET", "/api/v1/x", None, {})[0] == 200

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(twice, range(4)))
    assert seen.connections == 4 and len(seen.requests) == 8


def test_an_error_status_comes_back_with_its_whole_body(server: str) -> None:
    connections = Connections(_configuration(server))
    assert connections.request("GET", "/api/v1/missing", None, {}) == (404, b'{"kind":"Status","code":404}')
    assert connections.request("GET", "/api/v1/x", None, {}) == (200, b"{}")  # the connection goes on


def test_a_connection_the_server_closed_while_idle_is_opened_again(server: str, seen: Seen) -> None:
    seen.plan = ["close after"]
    connections = Connections(_configuration(server))
    assert connections.request("GET", "/api/v1/a", None, {})[0] == 200
    assert connections.request("GET", "/api/v1/b", None, {})[0] == 200
    assert seen.connections == 2 and [r[1] for r in seen.requests] == ["/api/v1/a", "/api/v1/b"]


def test_a_kept_connection_closed_as_the_request_went_out_sends_it_once_more(server: str, seen: Seen) -> None:
    seen.plan = ["answer", "drop"]
    connections = Connections(_configuration(server))
    assert connections.request("GET", "/api/v1/a", None, {})[0] == 200
    assert connections.request("PATCH", "/api/v1/b", b'{"n":1}', {})[0] == 200
    assert [(r[0], r[1], r[3]) for r in seen.requests] == [
        ("GET", "/api/v1/a", b""),
        ("PATCH", "/api/v1/b", b'{"n":1}'),
        ("PATCH", "/api/v1/b", b'{"n":1}'),
    ]
    assert seen.connections == 2


def test_a_new_connection_that_is_dropped_raises_and_is_not_sent_again(server: str, seen: Seen) -> None:
    seen.plan = ["drop"]
    connections = Connections(_configuration(server))
    with pytest.raises(http.client.RemoteDisconnected):
        connections.request("POST", "/api/v1/a", b"{}", {})
    assert len(seen.requests) == 1
    assert connections.request("POST", "/api/v1/a", b"{}", {})[0] == 200  # the next one reconnects


def test_an_api_server_behind_a_path_is_asked_under_it(server: str, seen: Seen) -> None:
    connections = Connections(_configuration(server + "/k8s/clusters/c-1/"))
    connections.request("GET", "/api/v1/x", None, {})
    assert seen.requests[0][1] == "/k8s/clusters/c-1/api/v1/x"


def test_a_request_goes_on_a_kept_connection_with_the_clients_token(server: str, seen: Seen) -> None:
    api = client.ApiClient(_configuration(server))
    for _ in range(3):
        assert kube.request(api, "PATCH", "/api/v1/x", b"{}", kube.MERGE_PATCH) == (200, b"{}")
    assert seen.connections == 1
    assert {r[2] for r in seen.requests} == {"Bearer token"}


@pytest.mark.parametrize(
    ("setting", "value", "direct"),
    [
        ("proxy", "http://proxy.test:3128", False),
        ("tls_server_name", "kubernetes", False),
        ("assert_hostname", False, False),
        ("socket_options", [], False),
        ("verify_ssl", False, True),
    ],
)
def test_only_configurations_reached_as_urllib3_would_use_kept_connections(
    setting: str, value: object, direct: bool
) -> None:
    configuration = _configuration("https://kube.test:6443")
    assert supported(configuration)
    setattr(configuration, setting, value)
    assert supported(configuration) is direct


def test_a_proxy_the_host_bypasses_does_not_need_urllib3() -> None:
    configuration = _configuration("https://kube.test:6443")
    configuration.proxy, configuration.no_proxy = "http://proxy.test:3128", "kube.test"
    assert supported(configuration)


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, ssl.SSLContext]:
    authority = pki.ca("test CA")
    key = pki.ec_key()
    cert = pki.issue("localhost", key, authority, dns_names=["localhost"])
    (tmp_path / "ca.crt").write_bytes(pki.pem(authority[0]))
    (tmp_path / "tls.crt").write_bytes(pki.pem(cert))
    (tmp_path / "tls.key").write_bytes(pki.key_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    return tmp_path / "ca.crt", context


def test_tls_is_verified_against_the_configured_authority(
    tls_files: tuple[Path, ssl.SSLContext], seen: Seen
) -> None:
    ca_file, server_context = tls_files
    for host in _serve(seen, server_context):
        trusting = _configuration(host)
        trusting.ssl_ca_cert = str(ca_file)
        assert Connections(trusting).request("GET", "/api/v1/x", None, {})[0] == 200
        with pytest.raises(ssl.SSLCertVerificationError):
            Connections(_configuration(host)).request("GET", "/api/v1/x", None, {})  # the system's CAs
        unverified = _configuration(host)
        unverified.verify_ssl = False
        assert Connections(unverified).request("GET", "/api/v1/x", None, {})[0] == 200
