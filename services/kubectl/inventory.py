"""The inventory of certificates, from what certcheck records: CertCheck and ClusterCertCheck statuses
(each lists its most urgent certificates) and the annotations on every Secret it covers (its most urgent
certificate's state). Pure: no I/O."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import yaml

from schemas import annotations as ann
from schemas.messages import State
from services.domain.states import URGENCY
from services.domain.times import parse_rfc3339

KIND_SECRET = "Secret"


@dataclass(frozen=True)
class Row:
    """One certificate (or, known only from a Secret's annotations, the Secret's most urgent one)."""

    namespace: str  # "" for a cluster-scoped object
    kind: str
    name: str
    key: str  # "" when known from the annotations only
    index: int | None
    state: str
    not_after: str | None = None
    subject: str | None = None
    issuer: str | None = None
    reason: str | None = None
    problems: tuple[str, ...] = ()
    checked_by: tuple[str, ...] = ()  # CertChecks (namespace/name) and ClusterCertChecks listing it

    @property
    def identity(self) -> tuple[str, str, str, str, int | None]:
        return (self.namespace, self.kind, self.name, self.key, self.index)

    def days_remaining(self, now: datetime) -> int | None:
        moment = parse_rfc3339(self.not_after)
        return None if moment is None else math.floor((moment - now).total_seconds() / 86400)

    def as_dict(self, now: datetime) -> dict[str, Any]:
        fields = {
            "namespace": self.namespace or None,
            "kind": self.kind,
            "name": self.name,
            "key": self.key or None,
            "index": self.index,
            "state": self.state,
            "notAfter": self.not_after,
            "daysRemaining": self.days_remaining(now),
            "subject": self.subject,
            "issuer": self.issuer,
            "reason": self.reason,
            "problems": list(self.problems) or None,
            "checkedBy": list(self.checked_by),
        }
        return {k: v for k, v in fields.items() if v is not None}


def _rank(state: str) -> int:
    try:
        return URGENCY[State(state)]
    except ValueError:
        return len(URGENCY)  # a state this release does not know: after the known ones


def urgency(row: Row) -> tuple[int, str, str, str, str, str, int]:
    return (
        _rank(row.state),
        row.not_after or "~",
        row.namespace,
        row.kind,
        row.name,
        row.key,
        row.index or 0,
    )


def _entry_row(entry: Mapping[str, Any], namespace: str, checked_by: str) -> Row | None:
    try:
        return Row(
            namespace=str(entry.get("namespace", namespace) or ""),
            kind=str(entry.get("kind") or KIND_SECRET),
            name=str(entry["name"]),
            key=str(entry["key"]),
            index=int(entry["index"]),
            state=str(entry["state"]),
            not_after=entry.get("notAfter"),
            subject=entry.get("subject"),
            issuer=entry.get("issuer"),
            reason=entry.get("reason"),
            problems=tuple(entry.get("problems") or ()),
            checked_by=(checked_by,),
        )
    except (KeyError, TypeError, ValueError):
        return None  # a status edited into another shape: skipped


@dataclass
class Inventory:
    """Rows by identity: a certificate several CertChecks list is one row naming them all."""

    rows: dict[tuple[str, str, str, str, int | None], Row] = field(default_factory=dict)
    omitted: int = 0  # certificates the statuses left out (their lists are capped)

    def add(self, row: Row) -> None:
        held = self.rows.get(row.identity)
        if held is not None:
            row = replace(held, checked_by=tuple(dict.fromkeys((*held.checked_by, *row.checked_by))))
        self.rows[row.identity] = row

    def add_status(self, certcheck: Mapping[str, Any], cluster: bool = False) -> None:
        meta = certcheck.get("metadata") or {}
        status = certcheck.get("status") or {}
        namespace = "" if cluster else str(meta.get("namespace", ""))
        name = str(meta.get("name", ""))
        checked_by = f"clustercertcheck/{name}" if cluster else f"{namespace}/{name}"
        for entry in status.get("certificates") or []:
            row = _entry_row(entry, namespace, checked_by) if isinstance(entry, Mapping) else None
            if row is not None:
                self.add(row)
        omitted = status.get("certificatesOmitted")
        self.omitted += omitted if isinstance(omitted, int) else 0

    def add_annotated(self, secret: Mapping[str, Any]) -> None:
        """A Secret certcheck annotated, unless the statuses listed one of its certificates already."""
        meta = secret.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        state = annotations.get(ann.STATE)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if not state or any(
            r.namespace == namespace and r.kind == KIND_SECRET and r.name == name for r in self.rows.values()
        ):
            return
        checked_by = tuple(c for c in annotations.get(ann.CHECKED_BY, "").split(",") if c)
        problems = tuple(p for p in annotations.get(ann.PROBLEMS, "").split("; ") if p)
        self.add(
            Row(
                namespace,
                KIND_SECRET,
                name,
                "",
                None,
                state,
                annotations.get(ann.NOT_AFTER),
                problems=problems,
                checked_by=checked_by,
            )
        )

    def sorted(self) -> list[Row]:
        return sorted(self.rows.values(), key=urgency)


def selected(
    rows: Iterable[Row],
    now: datetime,
    namespace: str | None = None,
    states: Sequence[str] = (),
    within_days: int | None = None,
) -> list[Row]:
    """The rows of a namespace, in one of ``states``, expiring within ``within_days`` (expired included)."""
    wanted = {s.lower() for s in states}
    return [
        row
        for row in rows
        if (namespace is None or row.namespace == namespace)
        and (not wanted or row.state.lower() in wanted)
        and (within_days is None or ((days := row.days_remaining(now)) is not None and days <= within_days))
    ]


def table(headers: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    """Columns as kubectl prints them: left-aligned, three spaces apart."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *lines, strict=True)]
    return "\n".join(
        "   ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *lines)
    )


def _days(row: Row, now: datetime) -> str:
    days = row.days_remaining(now)
    return "-" if days is None else str(days)


def render(rows: Sequence[Row], output: str, now: datetime) -> str:
    """``table``, ``wide``, ``json`` or ``yaml``."""
    if output == "json":
        return json.dumps([row.as_dict(now) for row in rows], indent=2)
    if output == "yaml":
        return yaml.safe_dump([row.as_dict(now) for row in rows], sort_keys=False).rstrip()
    if not rows:
        return "No certificates found."
    wide = output == "wide"
    headers = ["NAMESPACE", "NAME", "KEY", "STATE", "DAYS", "NOT AFTER"]
    if wide:
        headers += ["KIND", "INDEX", "SUBJECT", "ISSUER", "CHECKED BY", "PROBLEMS"]
    lines = []
    for row in rows:
        line = [
            row.namespace or "-",
            row.name,
            row.key or "*",
            row.state,
            _days(row, now),
            row.not_after or "-",
        ]
        if wide:
            index = "-" if row.index is None else str(row.index)
            extra = [row.subject or "-", row.issuer or "-", ",".join(row.checked_by) or "-"]
            line += [row.kind, index, *extra, "; ".join(row.problems) or row.reason or "-"]
        lines.append(line)
    return table(headers, lines)
