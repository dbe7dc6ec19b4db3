"""The annotations certcheck writes on Secrets (a stable, documented contract with users)."""

PREFIX = "certcheck.dev/"
NOT_AFTER = PREFIX + "not-after"
NOT_BEFORE = PREFIX + "not-before"
STATE = PREFIX + "state"
CHECKED_BY = PREFIX + "checked-by"

ALL = (NOT_AFTER, NOT_BEFORE, STATE, CHECKED_BY)


# The field manager the recorder writes as; "python-urllib3" is what releases before 2026-12-03 wrote as.
FIELD_MANAGER = "certcheck"
OUR_MANAGERS = (FIELD_MANAGER, "python-urllib3")


def owned(annotations: dict[str, str] | None) -> dict[str, str]:
    """The subset of a Secret's annotations that certcheck owns."""
    return {k: v for k, v in (annotations or {}).items() if k.startswith(PREFIX)}
