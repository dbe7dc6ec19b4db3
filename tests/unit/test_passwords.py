"""Keystore passwords kept in another Secret: resolution, reporting, and who depends on whom."""

from __future__ import annotations

import base64

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from devcluster.certs import expiring_in
from services.watcher.extract import ObjectMeta, RawSecret, secret_observed
from services.watcher.passwords import (
    PASSWORD_KEY,
    PASSWORD_SECRET,
    NotACredential,
    PasswordIndex,
    PasswordRef,
    password_ref,
)


def keystore(password: bytes) -> bytes:
    cert_pem, key_pem = expiring_in(40, "p12.test")
    return pkcs12.serialize_key_and_certificates(
        b"app",
        serialization.load_pem_private_key(key_pem, None),  # type: ignore[arg-type]
        x509.load_pem_x509_certificate(cert_pem),
        None,
        serialization.BestAvailableEncryption(password),
    )


def store_secret(store: bytes) -> RawSecret:
    meta = ObjectMeta(name="store", uid="u", resourceVersion="1", namespace="ns")
    return RawSecret(metadata=meta, type="Opaque", data={"app.p12": base64.b64encode(store).decode()})


class Secrets:
    """Password Secrets by (namespace, name): what the API server would return."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, bytes]] = {}

    def read(self, namespace: str, name: str) -> dict[str, bytes] | None:
        return self.data.get((namespace, name))


def test_the_reference_is_read_from_annotations_with_a_default_key() -> None:
    assert password_ref({PASSWORD_SECRET: "pw"}) == PasswordRef("pw", "password")
    assert password_ref({PASSWORD_SECRET: "pw", PASSWORD_KEY: "store-pass"}) == PasswordRef(
        "pw", "store-pass"
    )
    assert password_ref({"other": "x"}) is None


def test_a_keystore_opens_with_the_password_from_the_referenced_secret() -> None:
    secrets = Secrets()
    secrets.data[("ns", "pw")] = {"password": b"s3cret\n"}
    index = PasswordIndex(secrets.read)
    referenced = index.resolve("ns", "store", PasswordRef("pw", "password"))
    [source] = secret_observed(store_secret(keystore(b"s3cret")), referenced).sources
    assert len(source.certs) == 1 and source.error is None


def test_a_missing_password_secret_or_key_is_named_in_the_keystore_error() -> None:
    secrets = Secrets()
    index = PasswordIndex(secrets.read)
    store = store_secret(keystore(b"s3cret"))
    [missing] = secret_observed(store, index.resolve("ns", "store", PasswordRef("pw", "password"))).sources
    assert missing.error is not None and missing.error.endswith(
        "password Secret pw key password does not exist"
    )
    secrets.data[("ns", "pw")] = {"other": b"x"}
    [no_key] = secret_observed(store, index.resolve("ns", "store", PasswordRef("pw", "password"))).sources
    assert no_key.error is not None and no_key.error.endswith("has no such key")


def test_a_password_secret_without_the_credential_label_is_refused_and_named() -> None:
    def read(namespace: str, name: str) -> dict[str, bytes] | None:
        raise NotACredential(f"Secret {namespace}/{name} is not labelled")

    store = store_secret(keystore(b"s3cret"))
    referenced = PasswordIndex(read).resolve("ns", "store", PasswordRef("pw", "password"))
    [refused] = secret_observed(store, referenced).sources
    assert refused.error is not None and refused.error.endswith(
        "password Secret pw key password is not labelled certcheck.dev/credential=true"
    )
    assert refused.certs == []


def test_an_unreadable_password_secret_is_reported_without_the_exception_text() -> None:
    def read(namespace: str, name: str) -> dict[str, bytes] | None:
        raise RuntimeError("403 with details")

    referenced = PasswordIndex(read).resolve("ns", "store", PasswordRef("pw", "password"))
    assert referenced is not None and referenced.problem == "could not be read (RuntimeError)"


def test_the_index_knows_which_keystores_use_a_password_secret_and_forgets_them() -> None:
    index = PasswordIndex(Secrets().read)
    index.resolve("ns", "a", PasswordRef("pw", "password"))
    index.resolve("ns", "b", PasswordRef("pw", "password"))
    index.resolve("other", "c", PasswordRef("pw", "password"))
    assert index.keystores_using("ns", "pw") == ["a", "b"]
    index.resolve("ns", "a", PasswordRef("elsewhere", "password"))  # re-pointed
    index.forget("ns", "b")
    assert index.keystores_using("ns", "pw") == []
    assert index.keystores_using("ns", "elsewhere") == ["a"]
    index.resolve("ns", "a", None)  # the annotation was removed
    assert index.keystores_using("ns", "elsewhere") == []


def test_a_resolved_password_never_shows_in_its_representation() -> None:
    secrets = Secrets()
    secrets.data[("ns", "pw")] = {"password": b"hunter2"}
    referenced = PasswordIndex(secrets.read).resolve("ns", "store", PasswordRef("pw", "password"))
    assert referenced is not None and referenced.password == b"hunter2"
    assert "hunter2" not in repr(referenced)
