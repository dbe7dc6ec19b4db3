"""Status conditions, as every status certcheck writes keeps them (CertCheck, ClusterCertCheck). Pure."""

from __future__ import annotations

from datetime import datetime

from schemas.messages import Condition
from services.domain.times import rfc3339


def condition(
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    observed: dict[str, Condition],
    now: datetime,
) -> Condition:
    """A condition that keeps its lastTransitionTime from ``observed`` while its status stays."""
    status_text = "True" if status else "False"
    previous = observed.get(type_)
    since = previous.last_transition_time if previous and previous.status == status_text else rfc3339(now)
    return Condition(
        type=type_,
        status=status_text,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
