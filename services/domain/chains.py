"""Whether the certificates under one key form a chain, each issued by the next, and whether a Secret's
``ca.crt`` issues its ``tls.crt`` chain. Pure: no I/O.

A key holds a chain when it is ``tls.crt``, or its first certificate is a leaf followed by CA
certificates (a leaf and what issued it); a bundle of CA certificates (``ca.crt``, a trust bundle), or of
leaf certificates side by side, is never checked as a chain. A link that cannot be judged (an
algorithm ``cryptography`` cannot verify, a certificate that cannot be loaded) is not reported: only
what is known to be wrong is.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from services.domain.certs import MAX_TEXT

CHAIN_KEY = "tls.crt"
ANCHOR_KEY = "ca.crt"
# Work per Secret is bounded whatever it holds: a chain longer than this (real ones have 2 to 4
# certificates) is not checked, nor are anchors past this many (each pair may cost a signature check).
MAX_CHAIN = 16
MAX_ANCHORS = 64


@lru_cache(maxsize=4096)
def _load(pem: str) -> x509.Certificate | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except Exception:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except Exception:  # absent, or unreadable: not a CA
        return False


def _name(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string()[:MAX_TEXT] or "an empty subject"
    except Exception:
        return "an unreadable subject"


@lru_cache(maxsize=16384)
def issued_by(child_pem: str, parent_pem: str) -> bool | None:
    """Whether ``parent`` issued ``child`` (its name and its signature), None when that cannot be told."""
    child, parent = _load(child_pem), _load(parent_pem)
    if child is None or parent is None:
        return None
    try:
        if child.issuer != parent.subject:
            return False
        child.verify_directly_issued_by(parent)
        return True
    except InvalidSignature:
        return False
    except ValueError as exc:  # a name mismatch, or a key that cannot have made this signature
        return False if "mismatch" in str(exc) or "does not match" in str(exc) else None
    except Exception:  # an algorithm cryptography does not verify (RSA-PSS parameters, say)
        return None


def is_chain(key: str, pems: Sequence[str]) -> bool:
    """``tls.crt``, or a leaf followed by CA certificates (what issued it). A bundle of CAs, or of leaf
    certificates side by side (pinned certificates, say), is no chain."""
    if key == CHAIN_KEY:
        return True
    certs = [_load(pem) for pem in pems]
    first = certs[0] if certs else None
    return (
        first is not None
        and not _is_ca(first)
        and any(cert is not None and _is_ca(cert) for cert in certs[1:])
    )


def chain_problems(key: str, pems: Sequence[str]) -> list[str | None]:
    """For each certificate of the key, what is wrong with its link to the next, or None."""
    problems: list[str | None] = [None] * len(pems)
    if not 2 <= len(pems) <= MAX_CHAIN or not is_chain(key, pems):
        return problems
    for index in range(len(pems) - 1):
        if issued_by(pems[index], pems[index + 1]) is not False:
            continue
        parent = _load(pems[index + 1])
        issuer = next(
            (j for j in range(len(pems)) if j not in (index, index + 1) and issued_by(pems[index], pems[j])),
            None,
        )
        if issuer is not None:
            problems[index] = (
                f"chain out of order: issued by {key}[{issuer}], "
                f"not by the next certificate {key}[{index + 1}]"
            )
        else:
            what = _name(parent) if parent is not None else "an unreadable certificate"
            problems[index] = (
                f"chain broken: not issued by the next certificate {key}[{index + 1}] ({what}); "
                "an intermediate is missing or does not belong"
            )
    return problems


def anchor_problem(chain: Sequence[str], anchors: Sequence[str]) -> str | None:
    """What is wrong when no certificate of ``ca.crt`` issues (or is) a certificate of the chain."""
    if not chain or not anchors or len(chain) > MAX_CHAIN:
        return None
    anchors = anchors[:MAX_ANCHORS]
    verdicts = [anchor == link or issued_by(link, anchor) for anchor in anchors for link in chain]
    if any(verdicts) or None in verdicts:  # linked, or not known not to be
        return None
    first = _load(anchors[0])
    named = _name(first) if first is not None else "an unreadable certificate"
    more = f" or the {len(anchors) - 1} others" if len(anchors) > 1 else ""
    return f"chain incomplete: not issued by {ANCHOR_KEY} ({named}{more})"
