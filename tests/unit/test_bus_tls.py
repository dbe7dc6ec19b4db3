"""The bus's TLS context: verification always on, the given CA trusted, a client certificate loaded."""

import ssl
from pathlib import Path

import pytest

from devcluster.pki import write_pki
from services.common.bus import tls_context


def test_no_ca_and_no_client_certificate_gives_no_context() -> None:
    assert tls_context() is None


def test_a_ca_gives_a_context_that_verifies_the_server_and_its_name(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    context = tls_context(ca=str(pki["ca.crt"]))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    trusted = [entry["subject"] for entry in context.get_ca_certs()]
    assert ((("commonName", "certcheck-dev-ca"),),) in trusted


def test_a_client_certificate_is_loaded_and_still_verifies_the_server(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    context = tls_context(ca=str(pki["ca.crt"]), cert=str(pki["server.crt"]), key=str(pki["server.key"]))
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_a_client_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    with pytest.raises(ssl.SSLError):
        tls_context(ca=str(pki["ca.crt"]), cert=str(pki["server.crt"]))


def test_a_missing_ca_file_is_an_error_not_an_unverified_connection(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        tls_context(ca=str(tmp_path / "absent.crt"))
