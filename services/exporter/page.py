"""The inventory page: every certificate the views hold, most urgent first, as plain HTML (no script, no
external asset: it works offline in a cluster), with filters by namespace, state and issuer and a search
box (a GET form), and a page per object. Only certificate metadata, never anything else a Secret holds.
Pure: no I/O."""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from urllib.parse import quote, urlencode

from schemas.messages import State
from services.domain import model, states
from services.domain.certs import CertFacts
from services.domain.states import URGENCY
from services.domain.times import rfc3339
from services.domain.view import View

COLOURS = {
    State.EXPIRED: "#f8d7da",
    State.EXPIRING_SOON: "#fff3cd",
    State.INVALID: "#f5c6cb",
    State.RENEWAL_OVERDUE: "#ffe5b4",
    State.NOT_YET_VALID: "#e2e3e5",
    State.VALID: "#d4edda",
}
MAX_ROWS = 5000


@dataclass(frozen=True)
class Entry:
    namespace: str
    kind: str
    name: str
    key: str
    index: int
    state: State
    not_after: datetime | None
    subject: str
    issuer: str
    reason: str
    certchecks: tuple[str, ...]

    def days(self, now: datetime) -> int | None:
        return None if self.not_after is None else math.floor((self.not_after - now).total_seconds() / 86400)

    @property
    def urgency(self) -> tuple[int, str, str, str, str, str, int]:
        after = rfc3339(self.not_after) if self.not_after else "~"
        return (URGENCY[self.state], after, self.namespace, self.kind, self.name, self.key, self.index)


def entries(views: Iterable[View], now: datetime) -> list[Entry]:
    """One entry per certificate, in the most urgent state any CertCheck covering it gives it."""
    found: dict[tuple[str, str, str, str, int], Entry] = {}
    for view in views:
        for key in view.all_certchecks():
            check = view.certcheck(key)
            assert check is not None
            sources, _ = view.inputs(key)
            for source in sources:
                for cert in model.selected_entries(source, check.spec.keys):
                    entry = _entry(source, cert, check.spec.threshold_days, key[1], now)
                    identity = (entry.namespace, entry.kind, entry.name, entry.key, entry.index)
                    held = found.get(identity)
                    if held is not None:
                        worse = entry if URGENCY[entry.state] < URGENCY[held.state] else held
                        entry = replace(worse, certchecks=tuple(sorted({*held.certchecks, key[1]})))
                    found[identity] = entry
    return sorted(found.values(), key=lambda e: e.urgency)


def _entry(
    source: model.SecretView, cert: model.CertEntry, threshold: int, check: str, now: datetime
) -> Entry:
    parsed = cert.parsed
    where = (source.namespace, source.kind, source.name, cert.key, cert.index)
    if not isinstance(parsed, CertFacts):
        return Entry(*where, State.INVALID, None, "", "", parsed.reason, (check,))
    state = states.classify(parsed, threshold, now, model.renew_by(source, cert))
    return Entry(
        *where, state, parsed.not_after, parsed.subject_cn or "", parsed.issuer_cn or "", "", (check,)
    )


def selected(found: list[Entry], filters: Mapping[str, str]) -> list[Entry]:
    namespace, state = filters.get("namespace", ""), filters.get("state", "")
    issuer, search = filters.get("issuer", ""), filters.get("q", "").lower()
    return [
        e
        for e in found
        if (not namespace or e.namespace == namespace)
        and (not state or e.state.value == state)
        and (not issuer or e.issuer == issuer)
        and (not search or search in " ".join((e.namespace, e.name, e.key, e.subject, e.issuer)).lower())
    ]


_STYLE = (
    "body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#f0f0f0}"
    "form{margin:1em 0}.count{color:#555}"
)


def _page(title: str, body: str) -> bytes:
    head = f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
    document = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{head}</head><body>{body}</body></html>'
    )
    return document.encode()


def _options(name: str, values: Iterable[str], chosen: str) -> str:
    items = "".join(
        f'<option value="{html.escape(v)}"{" selected" if v == chosen else ""}>{html.escape(v)}</option>'
        for v in sorted(set(values))
    )
    return f'<select name="{name}" id="{name}"><option value="">every {name}</option>{items}</select>'


def _object_link(e: Entry) -> str:
    path = f"/object/{quote(e.namespace, safe='')}/{quote(e.kind, safe='')}/{quote(e.name, safe='')}"
    return f'<a href="{path}">{html.escape(e.name)}</a>'


def _rows(shown: list[Entry], now: datetime, link: bool = True) -> str:
    rows = []
    for e in shown:
        days = e.days(now)
        cells = [
            e.namespace,
            e.kind,
            None,
            f"{e.key}[{e.index}]",
            e.state.value,
            "" if days is None else str(days),
            rfc3339(e.not_after) if e.not_after else "",
            e.subject,
            e.issuer,
            e.reason,
            ", ".join(e.certchecks),
        ]
        tds = "".join(
            f"<td>{_object_link(e) if link else html.escape(e.name)}</td>"
            if c is None
            else f"<td>{html.escape(c)}</td>"
            for c in cells
        )
        rows.append(f'<tr class="state-{e.state.value}" style="background:{COLOURS[e.state]}">{tds}</tr>')
    header = "".join(
        f"<th>{h}</th>"
        for h in (
            "Namespace",
            "Kind",
            "Name",
            "Key",
            "State",
            "Days",
            "Not after",
            "Subject",
            "Issuer",
            "Reason",
            "CertChecks",
        )
    )
    return f'<table id="certificates"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _search(text: str) -> str:
    return f'<input type="search" name="q" id="q" placeholder="search" value="{html.escape(text)}">'


def inventory(found: list[Entry], filters: Mapping[str, str], now: datetime) -> bytes:
    """The page at ``/``: the filter form, then the certificates it selects, most urgent first."""
    shown = selected(found, filters)
    form = (
        '<form method="get" action="/">'
        + _options("namespace", (e.namespace for e in found), filters.get("namespace", ""))
        + _options("state", (s.value for s in State), filters.get("state", ""))
        + _options("issuer", (e.issuer for e in found if e.issuer), filters.get("issuer", ""))
        + _search(filters.get("q", ""))
        + '<button type="submit" id="filter">Filter</button> <a href="/">clear</a></form>'
    )
    count = f'<p class="count">{len(shown)} of {len(found)} certificates, as of {rfc3339(now)}</p>'
    cut = f"<p>The first {MAX_ROWS} shown.</p>" if len(shown) > MAX_ROWS else ""
    return _page(
        "certcheck: certificates", f"<h1>Certificates</h1>{form}{count}{_rows(shown[:MAX_ROWS], now)}{cut}"
    )


def object_page(found: list[Entry], namespace: str, kind: str, name: str, now: datetime) -> bytes | None:
    """The page of one Secret (or ConfigMap, or cluster-scoped object): its certificates; None if none."""
    mine = [e for e in found if (e.namespace, e.kind, e.name) == (namespace, kind, name)]
    if not mine:
        return None
    title = f"{kind} {namespace}/{name}"
    back = (
        '<p><a href="/">every certificate</a> · <a href="/?'
        + urlencode({"namespace": namespace})
        + '">this namespace</a></p>'
    )
    return _page(f"certcheck: {title}", f"<h1>{html.escape(title)}</h1>{back}{_rows(mine, now, link=False)}")
