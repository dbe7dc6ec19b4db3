"""The watcher reads a Secret's certificates again only when its values changed: a change of metadata
alone (certcheck's own annotations coming back) reuses what was read, and gives the same message."""

from __future__ import annotations

import base64

import msgspec
import pytest

from devcluster.certs import expiring_in
from schemas.messages import SecretObserved
from services.watcher.extract import ObjectMeta, RawSecret, digest, secret_observed
from services.watcher.memo import SecretMemo
from services.watcher.passwords import PasswordRef, ReferencedPassword
from tests import hostile


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def raw_secret(
    data: dict[str, str],
    name: str = "web",
    annotations: dict[str, str] | None = None,
    resource_version: str = "7",
    secret_type: str = "kubernetes.io/tls",
) -> RawSecret:
    meta = ObjectMeta(
        name=name,
        uid="u1",
        resourceVersion=resource_version,
        namespace="ns",
        labels={"app": "web"},
        annotations=annotations,
    )
    return RawSecret(metadata=meta, type=secret_type, data=data)


def observe(
    memo: SecretMemo, secret: RawSecret, referenced: ReferencedPassword | None = None
) -> SecretObserved:
    return secret_observed(secret, referenced, memo.content(secret, referenced))


def test_certcheck_annotations_coming_back_reuse_what_the_values_were_read_into() -> None:
    cert, key = expiring_in(10)
    data = {"tls.crt": b64(cert), "tls.key": b64(key)}
    memo = SecretMemo()
    first = observe(memo, raw_secret(data))
    echoed = raw_secret(dict(data), annotations={"certcheck.dev/state": "ExpiringSoon"}, resource_version="8")
    again = observe(memo, echoed)
    assert (memo.misses, memo.hits) == (1, 1)
    assert again == secret_observed(echoed)  # as if read afresh
    assert again.sources == first.sources and again.annotations == {"certcheck.dev/state": "ExpiringSoon"}


def test_a_changed_value_is_read_again() -> None:
    old, _ = expiring_in(10)
    new, _ = expiring_in(300)
    memo = SecretMemo()
    observe(memo, raw_secret({"tls.crt": b64(old)}))
    renewed = observe(memo, raw_secret({"tls.crt": b64(new)}, resource_version="8"))
    assert memo.misses == 2
    assert renewed == secret_observed(raw_secret({"tls.crt": b64(new)}, resource_version="8"))


def test_a_new_key_or_another_type_is_read_again() -> None:
    cert, _ = expiring_in(10)
    memo = SecretMemo()
    observe(memo, raw_secret({"tls.crt": b64(cert)}))
    with_config = observe(memo, raw_secret({"tls.crt": b64(cert), "config.yaml": b64(b"a: 1")}))
    assert with_config.other_keys == ["config.yaml"]
    opaque = observe(
        memo, raw_secret({"tls.crt": b64(cert), "config.yaml": b64(b"a: 1")}, secret_type="Opaque")
    )
    assert opaque.type == "Opaque"
    assert memo.misses == 3 and memo.hits == 0


def test_a_keystore_is_read_again_when_the_password_it_points_at_changes() -> None:
    keystore = {"keystore.p12": b64(b"not really a keystore")}
    ref = PasswordRef("pw", "password")
    memo = SecretMemo()
    observe(memo, raw_secret(keystore), ReferencedPassword(ref, password=b"one"))
    observe(memo, raw_secret(keystore), ReferencedPassword(ref, password=b"two"))
    observe(memo, raw_secret(keystore), ReferencedPassword(ref, problem="is missing"))
    observe(memo, raw_secret(keystore), ReferencedPassword(ref, problem="is missing"))
    assert (memo.misses, memo.hits) == (3, 1)


def _hostile_values() -> list[tuple[str, dict[str, str]]]:
    good = hostile.pem(hostile.certificate())
    cases = [
        (f"malformed: {defect}", {"tls.crt": b64(der), "ca.crt": b64(good.encode())})
        for defect, der in hostile.malformed().items()
    ]
    cases += [
        (f"odd: {oddity}", {"tls.crt": b64(hostile.pem(der).encode())})
        for oddity, der in hostile.odd_but_readable().items()
    ]
    leaf, _ = expiring_in(10, "leaf")
    other_ca, _ = expiring_in(100, "someone else")
    cases += [
        ("ca.crt issues nothing of the chain", {"tls.crt": b64(leaf), "ca.crt": b64(other_ca)}),
        ("not base64", {"tls.crt": "%%%"}),
        ("no certificate", {"tls.crt": b64(b"hello")}),
        ("missing tls.crt", {"other": b64(b"x")}),
    ]
    return cases


@pytest.mark.parametrize(("case", "data"), _hostile_values(), ids=[case for case, _ in _hostile_values()])
def test_whatever_a_secret_holds_its_remembered_content_gives_the_same_message(
    case: str, data: dict[str, str]
) -> None:
    memo = SecretMemo()
    fresh = observe(memo, raw_secret(data))
    remembered = observe(memo, raw_secret(data, annotations={"certcheck.dev/state": "Invalid"}))
    assert memo.hits == 1
    assert remembered == secret_observed(raw_secret(data, annotations={"certcheck.dev/state": "Invalid"}))
    assert digest(msgspec.structs.replace(remembered, annotations={})) == digest(fresh)


def test_the_memo_holds_no_secret_value() -> None:
    cert, key = expiring_in(10)
    memo = SecretMemo()
    observe(memo, raw_secret({"tls.crt": b64(cert + key), "tls.key": b64(key), "password": b64(b"hunter2")}))
    [entry] = memo._entries.values()
    held = entry.content + entry.digest
    assert b"PRIVATE KEY" not in held and b"hunter2" not in held and b64(key)[:40].encode() not in held


def test_a_deleted_secret_and_one_gone_from_a_listing_are_forgotten() -> None:
    cert, _ = expiring_in(10)
    memo = SecretMemo()
    for name in ("a", "b", "c"):
        observe(memo, raw_secret({"tls.crt": b64(cert)}, name=name))
    observe(memo, raw_secret({"tls.crt": b64(cert)}, name="opaque", secret_type="Opaque"))
    memo.forget("ns", "a")
    assert len(memo) == 3
    memo.listed("kubernetes.io/tls", {("ns", "c")})  # b went while the watch was down
    assert sorted(memo._entries) == [("ns", "c"), ("ns", "opaque")]  # another type's watch speaks for it
    memo.listed(None, set())
    assert len(memo) == 0


def test_the_watchers_observer_forgets_a_deleted_secret_and_prunes_by_the_listing_watchs_type() -> None:
    from services.common.settings import Settings
    from services.watcher.observer import SecretObserver

    cert, _ = expiring_in(10)
    put: list[object] = []
    observer = SecretObserver(Settings(secret_types="kubernetes.io/tls,Opaque"), None, put.append)  # type: ignore[arg-type]
    tls = raw_secret({"tls.crt": b64(cert)}, name="tls")
    opaque = raw_secret({"tls.crt": b64(cert)}, name="opaque", secret_type="Opaque")
    observer.observe(tls)
    observer.observe(opaque)
    observer.observe(raw_secret({"tls.crt": b64(cert)}, name="tls", resource_version="8"))
    assert (observer.memo.misses, observer.memo.hits) == (2, 1)
    observer.listed("secret.Opaque", set())
    assert len(observer.memo) == 1
    observer.after(tls, deleted=True)
    assert len(observer.memo) == 0 and put == []
