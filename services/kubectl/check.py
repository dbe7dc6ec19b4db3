"""``kubectl certcheck check FILE``: a local file's certificates evaluated by certcheck's own rules (the
watcher's readers: PEM, DER, PKCS#12, JKS/JCEKS, kubeconfigs; the same states, key and signature checks
and chain verification), no cluster needed."""

from __future__ import annotations

from datetime import datetime

from schemas.messages import State
from services.domain.certs import CertError, from_wire
from services.domain.hygiene import DEFAULT_POLICY, problems
from services.domain.sources import read_value
from services.domain.states import classify
from services.domain.times import rfc3339
from services.kubectl.inventory import Row, render, table

FILE_KIND = "File"


def check(
    name: str, value: bytes, now: datetime, threshold_days: int = 30, password: bytes | None = None
) -> list[Row]:
    """A row per certificate in ``value`` (read as the data key ``name`` would be: ``*.p12`` as PKCS#12,
    say), or one Invalid row saying why there is none."""
    source, _ = read_value(name, value, {}, (password,) if password is not None else ())
    if source.error is not None:
        return [Row("", FILE_KIND, name, name, 0, State.INVALID.value, reason=source.error)]
    rows = []
    for index, certificate in enumerate(source.certs):
        facts = from_wire(certificate)
        if isinstance(facts, CertError):
            rows.append(Row("", FILE_KIND, name, name, index, State.INVALID.value, reason=facts.reason))
            continue
        found = tuple(p.message for p in problems(facts, DEFAULT_POLICY))
        rows.append(
            Row(
                "",
                FILE_KIND,
                name,
                certificate.origin or name,
                index,
                classify(facts, threshold_days, now).value,
                not_after=rfc3339(facts.not_after),
                subject=facts.subject_cn,
                issuer=facts.issuer_cn,
                problems=found,
            )
        )
    return rows


def render_check(rows: list[Row], output: str, now: datetime) -> str:
    """A file's certificates: as ``render`` for json and yaml; a table of its own, saying why an entry
    is Invalid or what the policy finds wrong."""
    if output in ("json", "yaml"):
        return render(rows, output, now)
    headers = ["CERTIFICATE", "INDEX", "STATE", "DAYS", "NOT AFTER", "SUBJECT", "ISSUER", "PROBLEMS"]
    lines = [
        [
            row.key,
            str(row.index),
            row.state,
            "-" if (days := row.days_remaining(now)) is None else str(days),
            row.not_after or "-",
            row.subject or "-",
            row.issuer or "-",
            "; ".join(row.problems) or row.reason or "-",
        ]
        for row in rows
    ]
    return table(headers, lines)
