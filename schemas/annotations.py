"""The annotations certcheck writes on Secrets (a stable, documented contract with users)."""

PREFIX = "certcheck.dev/"
NOT_AFTER = PREFIX + "not-after"
NOT_BEFORE = PREFIX + "not-before"
STATE = PREFIX + "state"
CHECKED_BY = PREFIX + "checked-by"
# What the strictest policy of the covering CertChecks finds wrong besides the dates (weak key or
# signature, broken chain), as text; absent when nothing is.
PROBLEMS = PREFIX + "problems"

ALL = (NOT_AFTER, NOT_BEFORE, STATE, CHECKED_BY, PROBLEMS)

# Set by cert-manager on the Secrets it writes: the Certificate that manages it.
CERT_MANAGER_CERTIFICATE = "cert-manager.io/certificate-name"

# The label a Secret must carry for certcheck to use it as a credential (a notification token, signing
# secret or headers, a keystore password): whoever may create a CertCheck or annotate a keystore must not
# make certcheck read, and send, a Secret its owner never meant for it.
CREDENTIAL_LABEL = PREFIX + "credential"
CREDENTIAL_LABEL_VALUE = "true"


def is_credential(labels: dict[str, str] | None) -> bool:
    return (labels or {}).get(CREDENTIAL_LABEL) == CREDENTIAL_LABEL_VALUE


def not_a_credential(namespace: str, name: str) -> str:
    return f"Secret {namespace}/{name} is not labelled {CREDENTIAL_LABEL}={CREDENTIAL_LABEL_VALUE}"


# The field manager the recorder writes as; "python-urllib3" is what releases before 2026-12-03 wrote as.
FIELD_MANAGER = "certcheck"
OUR_MANAGERS = (FIELD_MANAGER, "python-urllib3")


def owned(annotations: dict[str, str] | None) -> dict[str, str]:
    """The subset of a Secret's annotations that certcheck owns."""
    return {k: v for k, v in (annotations or {}).items() if k.startswith(PREFIX)}
