"""Which Kubernetes Events a change deserves. Pure: no I/O.

One Event per state change per certificate, on the Secret, and one summary per reason on the CertCheck:
- Warning ``ExpiringSoon``, ``Expired``, ``Invalid``, ``RenewalOverdue``: a certificate entered that state;
- Normal ``Renewed``: the certificate was replaced by one with a later notAfter;
- Normal ``Recovered``: a certificate left a bad state without being replaced (e.g. a threshold change);
- Warning ``Weak`` or ``ChainInvalid`` on the Secret: its certificates have problems its
  ``certcheck.dev/problems`` annotation did not record yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import cast

from schemas import annotations as ann
from schemas.messages import AnnotationPatch, CertCheckStatus, EventIntent, State
from services.domain.events import certcheck_event, dedup_key, secret_event_intent
from services.domain.hygiene import WEAK
from services.domain.model import CertCheckSpec, SecretView
from services.domain.times import rfc3339
from services.evaluator.annotations import SecretOutcome, overlaid, recorded_state
from services.evaluator.hygiene import SecretProblems
from services.evaluator.rating import BY_URGENCY, Rated, SecretState

WARNING_STATES = (State.EXPIRING_SOON, State.EXPIRED, State.INVALID, State.RENEWAL_OVERDUE)
RENEWED = "Renewed"
RECOVERED = "Recovered"
CHAIN_INVALID = "ChainInvalid"
_EXAMPLES = 3


def transition_reason(
    old_state: str | None, new_state: str, old_not_after: str | None, new_not_after: str | None
) -> str | None:
    """The Event reason for a certificate going from old to new, or None when nothing is worth saying."""
    if new_state != old_state and new_state in WARNING_STATES:
        return new_state
    if old_state is None:
        return None
    if old_not_after and new_not_after and new_not_after > old_not_after:  # RFC 3339 UTC sorts as text
        return RENEWED
    if old_state in WARNING_STATES and new_state == State.VALID:
        return RECOVERED
    return None


@dataclass(frozen=True, slots=True)
class SecretTransition:
    """A Secret going from the state its annotations record to the state its certificates are in now."""

    namespace: str
    name: str
    uid: str
    before: SecretState  # as recorded (its annotations, with what the evaluation before told)
    after: SecretState  # as rated now, at the largest threshold of the CertChecks covering it
    threshold_days: int
    certchecks: tuple[str, ...]


def secret_event(change: SecretTransition) -> EventIntent | None:
    """The Event a Secret's transition deserves, or None."""
    old_state, new_state = change.before.state, change.after.state
    old_not_after, new_not_after = change.before.not_after, change.after.not_after
    if new_state is None:
        return None
    reason = transition_reason(old_state, new_state, old_not_after, new_not_after)
    if reason is None:
        return None
    where = f"Certificate in Secret {change.namespace}/{change.name}"
    messages = {
        State.EXPIRED: f"{where} expired at {new_not_after}",
        State.EXPIRING_SOON: (
            f"{where} expires at {new_not_after}, within the {change.threshold_days}-day threshold of "
            f"CertCheck {', '.join(change.certchecks)}"
        ),
        State.INVALID: f"{where} cannot be read (see the CertCheck's status for the reason)",
        State.RENEWAL_OVERDUE: (
            f"{where} (notAfter {new_not_after}) was not renewed: cert-manager renews at two thirds of a "
            "certificate's lifetime, which passed over an hour ago; see its Certificate's conditions"
        ),
        RENEWED: f"{where} was renewed: notAfter {old_not_after} -> {new_not_after}",
        RECOVERED: f"{where} is {new_state} again (notAfter {new_not_after})",
    }
    return secret_event_intent(
        change.namespace,
        change.name,
        change.uid,
        "Warning" if reason in WARNING_STATES else "Normal",
        str(reason),
        messages[reason],
        _transition(old_state, old_not_after, new_state),
        str(new_not_after),
    )


def _transition(old_state: str | None, old_not_after: str | None, new_state: str) -> str:
    """What a Secret Event's occurrence is: the transition, not the resourceVersion it was seen at. The
    same transition derived again (certcheck's annotations deleted by hand, a redelivery) is the same
    occurrence, so it is not counted twice; coming back to a state by another way is a new one."""
    return f"{old_state or '-'}@{old_not_after or '-'}>{new_state}"


def secret_events(
    outcomes: Sequence[SecretOutcome], told_patches: Sequence[AnnotationPatch] = ()
) -> list[EventIntent]:
    """The Events on the Secrets whose state changed since their annotations recorded it.

    What certcheck writes in the annotations (which, how formatted, whether a patch is due) does not
    enter: only the recorded state and the state now. ``told_patches``: the annotation patches of the
    evaluation before, which laid over what each Secret carries are its record too (a change that comes
    before what that evaluation said was written and watched back still gets its Event).
    """
    pending = {(p.name, p.uid): p.annotations for p in told_patches}
    events = []
    for outcome in outcomes:  # every Secret of the CertCheck at every evaluation: kept lean
        secret = outcome.secret
        edited = secret.edited_annotations
        recorded = secret.annotations
        if pending:
            recorded = overlaid(recorded, pending.get((secret.name, secret.uid)))
        if outcome.problems.text is not None and ann.PROBLEMS not in edited:
            found = problems_event(secret, recorded.get(ann.PROBLEMS), outcome.problems)
            if found is not None:
                events.append(found)
        if edited and (ann.STATE in edited or ann.NOT_AFTER in edited):
            continue  # a hand edit, not a state certcheck recorded: put back without an Event
        before = recorded_state(recorded)
        if before == outcome.state:
            continue  # nothing happened (most Secrets, most of the time)
        event = secret_event(
            SecretTransition(
                namespace=secret.namespace,
                name=secret.name,
                uid=secret.uid,
                before=before,
                after=outcome.state,
                threshold_days=outcome.coverage.max_threshold_days,
                certchecks=outcome.coverage.certchecks,
            )
        )
        if event:
            events.append(event)
    return events


def problems_event(secret: SecretView, recorded: str | None, now: SecretProblems) -> EventIntent | None:
    """A Warning on a Secret whose certificates have problems its annotation did not record yet:
    ``Weak`` (a key or signature the policy calls weak) or, for a broken chain only, ``ChainInvalid``."""
    if now.text is None or now.text == recorded:
        return None
    reason = WEAK if WEAK in now.kinds else CHAIN_INVALID
    message = f"Certificate in Secret {secret.namespace}/{secret.name}: {now.text}"
    occurrence = dedup_key(recorded or "-", now.text)
    return secret_event_intent(
        secret.namespace, secret.name, secret.uid, "Warning", reason, message, occurrence, now.text
    )


@dataclass(frozen=True, slots=True)
class EntryChange:
    """One certificate entry of a CertCheck's status: what it is now, and its identity."""

    label: str  # secret/key[index]
    kind: str  # Secret or ConfigMap
    secret: str
    key: str
    index: int
    state: str
    not_after: str | None
    fingerprint: str


def certcheck_events(
    namespace: str,
    name: str,
    uid: str,
    resource_version: str,
    threshold_days: int,
    entries: Sequence[EntryChange],
    observed: CertCheckStatus | None,
) -> list[EventIntent]:
    """One summary Event per reason for the entries that changed since the status was last written."""
    previous = {(c.kind, c.name, c.key, c.index): c for c in observed.certificates} if observed else {}
    truncated = bool(observed and observed.certificates_omitted)
    moved: dict[str, list[EntryChange]] = {}
    for entry in entries:
        before = previous.get((entry.kind, entry.secret, entry.key, entry.index))
        if before is None and truncated:
            continue  # left out of the capped list last time: its previous state is unknown
        reason = transition_reason(
            str(before.state) if before else None,
            entry.state,
            before.not_after if before else None,
            entry.not_after,
        )
        if reason:
            moved.setdefault(reason, []).append(entry)
    descriptions = {
        State.EXPIRING_SOON: f"newly expiring within {threshold_days} days",
        State.EXPIRED: "newly expired",
        State.INVALID: "newly unreadable",
        State.RENEWAL_OVERDUE: "newly overdue for renewal by cert-manager",
        RENEWED: "renewed",
        RECOVERED: "recovered",
    }
    events = []
    for reason, changed in moved.items():
        shown = ", ".join(
            f"{e.label} (notAfter {e.not_after})" if e.not_after else e.label for e in changed[:_EXAMPLES]
        )
        more = f" and {len(changed) - _EXAMPLES} more" if len(changed) > _EXAMPLES else ""
        events.append(
            certcheck_event(
                namespace,
                name,
                uid,
                "Warning" if reason in WARNING_STATES else "Normal",
                str(reason),
                f"{len(changed)} certificates {descriptions[reason]}: {shown}{more}",
                resource_version,
                *sorted(f"{e.label}@{e.fingerprint}" for e in changed),
            )
        )
    return events


def _entry_change(rated: Rated) -> EntryChange:
    """A certificate as the summary Events compare it, worked out once per Rated."""
    held = rated.change
    if held is None:
        held = _new_entry_change(rated)
        object.__setattr__(rated, "change", held)
    return cast(EntryChange, held)


def _new_entry_change(rated: Rated) -> EntryChange:
    facts = rated.facts
    return EntryChange(
        label=rated.label,
        kind=rated.secret.kind,
        secret=rated.secret.name,
        key=rated.entry.key,
        index=rated.entry.index,
        state=str(rated.state),
        not_after=rfc3339(facts.not_after) if facts else None,
        fingerprint=facts.fingerprint if facts else "",
    )


def summary_events(
    spec: CertCheckSpec,
    rated: Sequence[Rated],
    base: CertCheckStatus | None,
    by_identity: Mapping[tuple[str, str, str, int], Rated] | None = None,
) -> list[EventIntent]:
    """The CertCheck's summary Events for the certificates that changed since ``base``, the status the
    last evaluation told (or, without one, the status written). ``by_identity``: every entry of
    ``rated`` by its identity, when the caller keeps them so (looked up rather than scanned)."""
    if base is not None and base.certificates_omitted:
        # Compare with the entries the status listed: only those can have changed state.
        listed = {(c.kind, c.name, c.key, c.index) for c in base.certificates}
        if by_identity is None:
            rated = [r for r in rated if r.identity in listed]
        else:
            rated = sorted((r for i in listed if (r := by_identity.get(i)) is not None), key=BY_URGENCY)
    return certcheck_events(
        spec.namespace,
        spec.name,
        spec.uid,
        spec.resource_version,
        spec.threshold_days,
        [_entry_change(r) for r in rated],
        base,
    )
