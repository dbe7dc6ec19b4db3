"""PKCS#12 passwords kept in another Secret, named by annotations on the keystore's Secret.

A keystore Secret says where its password is::

    keystore.certcheck.dev/password-secret: app-keystore-password   # a Secret in the same namespace
    keystore.certcheck.dev/password-key: password                    # optional, default "password"

and the password Secret opts in with the label ``certcheck.dev/credential: "true"`` (else the keystore is
reported Invalid, saying so): writing an annotation on one Secret must not make certcheck read another.

The watcher reads that Secret when it reads the keystore, and remembers who points where, so that a
change to the password Secret re-reads every keystore that uses it. The password never leaves the
watcher. (The ``certcheck.dev/`` annotations are certcheck's own output; these are the user's input,
hence their own prefix, which certcheck never removes.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from schemas.annotations import CREDENTIAL_LABEL, CREDENTIAL_LABEL_VALUE
from services.watcher.listwatch import RetryLater

PASSWORD_SECRET = "keystore.certcheck.dev/password-secret"
PASSWORD_KEY = "keystore.certcheck.dev/password-key"
DEFAULT_PASSWORD_KEY = "password"


@dataclass(frozen=True)
class PasswordRef:
    secret: str
    key: str


@dataclass(frozen=True)
class ReferencedPassword:
    """The password a keystore Secret points at, or why it could not be had."""

    ref: PasswordRef
    password: bytes | None = field(default=None, repr=False)  # never in a log line or traceback
    problem: str | None = None

    def describe(self) -> str:
        return f"password Secret {self.ref.secret} key {self.ref.key}"


def password_ref(annotations: Mapping[str, str] | None) -> PasswordRef | None:
    secret = (annotations or {}).get(PASSWORD_SECRET, "").strip()
    if not secret:
        return None
    return PasswordRef(secret, (annotations or {}).get(PASSWORD_KEY, "").strip() or DEFAULT_PASSWORD_KEY)


class NotACredential(Exception):
    """The Secret exists but does not carry the credential label: certcheck may not use it."""


# Reads one Secret's data (decoded), or None when there is no such Secret; raises NotACredential for a
# Secret without the credential label, and on other failures.
ReadSecret = Callable[[str, str], Mapping[str, bytes] | None]


class PasswordIndex:
    """Resolves password references and remembers them, for every Secret watch (each on its thread)."""

    def __init__(self, read: ReadSecret) -> None:
        self._read = read
        self._lock = threading.Lock()
        self._points_at: dict[tuple[str, str], str] = {}  # (namespace, keystore Secret) -> password Secret
        self._pointed_by: dict[tuple[str, str], set[str]] = {}  # (namespace, password Secret) -> keystores

    def resolve(self, namespace: str, holder: str, ref: PasswordRef | None) -> ReferencedPassword | None:
        """Record where ``holder`` points (or that it points nowhere) and read that password."""
        self._track(namespace, holder, ref.secret if ref else None)
        if ref is None:
            return None
        try:
            data = self._read(namespace, ref.secret)
        except RetryLater:
            raise  # a passing failure: the keystore is read again later, not reported unreadable
        except NotACredential:
            label = f"{CREDENTIAL_LABEL}={CREDENTIAL_LABEL_VALUE}"
            return ReferencedPassword(ref, problem=f"is not labelled {label}")
        except Exception as exc:  # the API said something else than the Secret or 404 (a 403, say)
            return ReferencedPassword(ref, problem=f"could not be read ({type(exc).__name__})")
        if data is None:
            return ReferencedPassword(ref, problem="does not exist")
        if ref.key not in data:
            return ReferencedPassword(ref, problem="has no such key")
        return ReferencedPassword(ref, password=data[ref.key].strip())

    def forget(self, namespace: str, holder: str) -> None:
        self._track(namespace, holder, None)

    def keystores_using(self, namespace: str, password_secret: str) -> list[str]:
        with self._lock:
            return sorted(self._pointed_by.get((namespace, password_secret), ()))

    def _track(self, namespace: str, holder: str, target: str | None) -> None:
        with self._lock:
            previous = self._points_at.pop((namespace, holder), None)
            if previous is not None:
                users = self._pointed_by.get((namespace, previous), set())
                users.discard(holder)
                if not users:
                    self._pointed_by.pop((namespace, previous), None)
            if target is not None:
                self._points_at[(namespace, holder)] = target
                self._pointed_by.setdefault((namespace, target), set()).add(holder)
