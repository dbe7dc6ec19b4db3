"""The exporter's inventory page against the running stack: an expired and an expiring certificate in
the right order, the filters, a page per Secret; and the same in a real browser (headless Chromium, from
Debian's package, which `make test` installs), with a screenshot."""

from __future__ import annotations

import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from devcluster.certs import expiring_in
from devcluster.stack import Stack
from tests.conftest import Cluster, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As this machine's notes say: no sandbox as root, and no background network (the network is closed).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        return str(response.read().decode())


@pytest.fixture
def shop(cluster: Cluster, namespace: str) -> str:
    for name, days in (("valid", 200), ("soon", 5), ("gone", -1)):
        cert, key = expiring_in(days, f"{name}.test")
        cluster.create_tls_secret(namespace, name, cert, key, labels={"app": "shop"})
    cluster.create_certcheck(namespace, "c", {"matchLabels": {"app": "shop"}})
    cluster.wait_status(namespace, "c", expiredCount=1, expiringSoonCount=1, validCount=1)
    return namespace


def page_url(stack: Stack, **filters: str) -> str:
    return f"http://127.0.0.1:{stack.http_ports['exporter']}/?{urlencode(filters)}"


def test_the_page_lists_the_most_urgent_first_and_filters(stack: Stack, shop: str) -> None:
    page = wait_for(
        lambda: (p := fetch(page_url(stack, namespace=shop))) and ">gone<" in p and p, what="the page"
    )
    assert page.index(">gone<") < page.index(">soon<") < page.index(">valid<")
    assert "3 of" in page
    expired = fetch(page_url(stack, namespace=shop, state="Expired"))
    assert ">gone<" in expired and ">soon<" not in expired
    assert ">soon<" in fetch(page_url(stack, namespace=shop, q="soon.TEST"))
    secret = fetch(f"http://127.0.0.1:{stack.http_ports['exporter']}/object/{shop}/Secret/soon")
    assert f"Secret {shop}/soon" in secret and "soon.test" in secret
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(f"http://127.0.0.1:{stack.http_ports['exporter']}/object/{shop}/Secret/nothing")
    assert missing.value.code == 404


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (make test installs it)")
def test_a_real_browser_renders_the_order_and_the_filters(stack: Stack, shop: str, tmp_path: Path) -> None:
    assert CHROMIUM is not None

    def dom(url: str) -> str:
        profile = tmp_path / "profile"
        done = subprocess.run(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    wait_for(lambda: ">gone<" in fetch(page_url(stack, namespace=shop)), what="the page")
    rendered = dom(page_url(stack, namespace=shop))
    rows = [line for line in rendered.split("<tr ")[1:]]
    names = [next(n for n in ("gone", "soon", "valid") if f">{n}<" in row) for row in rows]
    assert names == ["gone", "soon", "valid"]
    assert 'class="state-Expired"' in rows[0] and 'class="state-ExpiringSoon"' in rows[1]
    # The filter form is a GET form: submitting it with a state chosen loads exactly this URL.
    filtered = dom(page_url(stack, namespace=shop, state="ExpiringSoon", issuer="", q=""))
    assert ">soon<" in filtered and ">gone<" not in filtered and ">valid<" not in filtered
    shot = tmp_path / "inventory.png"
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={tmp_path / 'shot'}",
            f"--screenshot={shot}",
            "--window-size=1400,500",
            page_url(stack, namespace=shop),
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
