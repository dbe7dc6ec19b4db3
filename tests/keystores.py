"""Java keystores built by the JDK's own keytool, so that the reader is tested against the real format."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

KEYTOOL = shutil.which("keytool")
needs_keytool = pytest.mark.skipif(KEYTOOL is None, reason="the JDK's keytool is not installed")


def _keytool(*args: str) -> None:
    assert KEYTOOL is not None
    subprocess.run([KEYTOOL, *args], check=True, capture_output=True, timeout=60)


def java_keystore(
    store_type: str,
    password: str,
    key_pair: str | None = None,
    trusted: dict[str, bytes] | None = None,
    secret_key: str | None = None,
    validity_days: int = 30,
) -> bytes:
    """A keystore of ``store_type`` (JKS, JCEKS) holding a key pair (CN = ``key_pair``, self-signed),
    trusted certificates (alias -> PEM) and a secret key, as keytool writes it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "store"
        common = ["-keystore", str(path), "-storetype", store_type, "-storepass", password, "-noprompt"]
        if key_pair:
            _keytool(
                "-genkeypair",
                "-alias",
                "app",
                "-keyalg",
                "EC",
                "-groupname",
                "secp256r1",
                "-dname",
                f"CN={key_pair}",
                "-validity",
                str(validity_days),
                "-keypass",
                password,
                *common,
            )
        for alias, pem in (trusted or {}).items():
            certificate = Path(directory) / f"{alias}.pem"
            certificate.write_bytes(pem)
            _keytool("-importcert", "-alias", alias, "-file", str(certificate), *common)
        if secret_key:
            _keytool(
                "-genseckey",
                "-alias",
                secret_key,
                "-keyalg",
                "AES",
                "-keysize",
                "128",
                "-keypass",
                password,
                *common,
            )
        return path.read_bytes()
