"""Messages on the bus. Every message is a tagged, versioned msgspec Struct.

The tag (``kind``) names the message and its schema version, e.g. ``SecretObserved/v1``. A breaking
change adds a new tag; consumers decode with the union types below and reject unknown tags.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import msgspec


class State(enum.StrEnum):
    VALID = "Valid"
    EXPIRING_SOON = "ExpiringSoon"
    EXPIRED = "Expired"
    NOT_YET_VALID = "NotYetValid"
    INVALID = "Invalid"
    # A certificate cert-manager manages (the Secret names its Certificate) still not replaced a while
    # after its renewal point: a renewal that stalls, caught weeks before the threshold.
    RENEWAL_OVERDUE = "RenewalOverdue"


# ---------------------------------------------------------------------------------------------------
# Observed objects (published by the watcher)
# ---------------------------------------------------------------------------------------------------


class SelectorRequirement(msgspec.Struct, frozen=True, rename="camel"):
    key: str
    operator: str
    values: list[str] = []


class LabelSelector(msgspec.Struct, frozen=True, rename="camel"):
    match_labels: dict[str, str] = {}
    match_expressions: list[SelectorRequirement] = []


class Certificate(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """What the watcher read from one certificate (decoded once, there): its facts, or ``error``, why it
    cannot be read. Never any key material."""

    not_before: datetime | None = None
    not_after: datetime | None = None
    subject_cn: str | None = None
    issuer_cn: str | None = None
    serial_number: str = ""  # hex
    fingerprint: str = ""  # sha256 of the DER, hex
    dns_names: list[str] = []
    error: str | None = None
    key_algorithm: str | None = None  # RSA, EC, Ed25519, Ed448, DSA
    key_size: int | None = None  # bits (an EC key: its curve's)
    signature_algorithm: str | None = None  # e.g. sha256WithRSAEncryption
    signature_hash: str | None = None  # e.g. sha256 (None: EdDSA, or an algorithm not known)
    chain_problem: str | None = None  # what is wrong with the chain it is part of
    origin: str | None = None  # where in the value it is (a kubeconfig's user or cluster), if anywhere


class CertSource(msgspec.Struct, frozen=True, omit_defaults=True):
    """The certificates found under one data key of a Secret (or ConfigMap), in order: a chain's leaf
    first. ``error`` says why the key could not be read (for example: no certificate found).

    ``pem`` (PEM ``CERTIFICATE`` blocks) is what watchers wrote before they published facts: still read,
    never written (a watcher that finds such messages lists everything again, see OBJECT_FORMAT).
    """

    key: str
    certs: list[Certificate] = []
    error: str | None = None
    pem: list[str] = []


# The format of object messages. A watcher that finds it changed since it saved its progress lists every
# object again, so each is published in this format (2: certificates as facts, not PEM; 3: with their
# keys, signatures and chains).
OBJECT_FORMAT = 3


class SecretObserved(msgspec.Struct, frozen=True, tag_field="kind", tag="SecretObserved/v1"):
    namespace: str
    name: str
    uid: str
    resource_version: str
    type: str
    labels: dict[str, str] = {}
    # Only the annotations certcheck owns (certcheck.dev/...): the recorder's diff base.
    annotations: dict[str, str] = {}
    sources: list[CertSource] = []
    other_keys: list[str] = []  # keys holding no certificate (names only)
    # Those of certcheck's annotations someone else wrote last (kubectl, say): not a state certcheck
    # recorded, so no basis for an Event; they are put back.
    edited_annotations: list[str] = []
    # The cert-manager Certificate that manages the Secret (its cert-manager.io/certificate-name
    # annotation), whose renewal certcheck watches for.
    certificate_name: str | None = None


class ConfigMapObserved(msgspec.Struct, frozen=True, tag_field="kind", tag="ConfigMapObserved/v1"):
    """A ConfigMap (a trust bundle, typically): read-only for certcheck, which never writes to it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    labels: dict[str, str] = {}
    sources: list[CertSource] = []
    other_keys: list[str] = []


class ClusterSourceObserved(msgspec.Struct, frozen=True, tag_field="kind", tag="ClusterSourceObserved/v1"):
    """A cluster-scoped object holding CA bundles (a webhook configuration, an APIService, a CRD's
    conversion webhook): one source per bundle, keyed by the webhook's name (``caBundle`` for an
    APIService, ``conversion`` for a CRD). Its namespace is subjects.CLUSTER_NAMESPACE. Read-only."""

    object_kind: str  # the subject's kind token (subjects.KIND_APISERVICE, ...)
    namespace: str
    name: str
    uid: str
    resource_version: str
    labels: dict[str, str] = {}
    sources: list[CertSource] = []


class CertificateObserved(msgspec.Struct, frozen=True, tag_field="kind", tag="CertificateObserved/v1"):
    """A cert-manager Certificate (watched when certcheck may read them): the Secret it writes, and when
    it plans to renew the certificate in it (``status.renewalTime``)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    secret_name: str = ""
    renewal_time: datetime | None = None


class SecretKeyRef(msgspec.Struct, frozen=True):
    name: str
    key: str


class SecretRef(msgspec.Struct, frozen=True):
    name: str


DEFAULT_NOTIFY_STATES = ("ExpiringSoon", "Expired", "Invalid", "RenewalOverdue")
# The fields of a notification target every channel shares; each other field of a target names a channel.
TARGET_FIELDS = ("name", "states", "repeatInterval", "sendResolved", "remindAt")


class NotificationTarget(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    name: str
    # Each channel's settings as the CertCheck gives them (JSON objects), by the field that names the
    # channel (``slack``, ``webhook``, ...). The channel's module in the notifier reads and checks them
    # (services/notifier/channels/), so this contract names no channel and a new one changes nothing here.
    channels: dict[str, dict[str, Any]] = {}
    states: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_NOTIFY_STATES))
    repeat_interval: str | None = None  # e.g. "24h"; default: notify on state change only
    send_resolved: bool = False
    remind_at: list[str] = []  # e.g. ["30d", "7d"]: once each, that long before a certificate's notAfter
    # Read, never written: where messages of earlier releases held the two channels there were. They
    # are moved into ``channels`` as such a message is decoded.
    slack: dict[str, Any] | None = None
    webhook: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        legacy = {name: value for name, value in (("slack", self.slack), ("webhook", self.webhook)) if value}
        if legacy:
            msgspec.structs.force_setattr(self, "channels", {**legacy, **self.channels})
            msgspec.structs.force_setattr(self, "slack", None)
            msgspec.structs.force_setattr(self, "webhook", None)


class NotificationSpec(msgspec.Struct, frozen=True):
    targets: list[NotificationTarget] = []


class HygienePolicy(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a CertCheck calls weak (``spec.policy``); every field unset takes the safe default."""

    minimum_rsa_key_size: int | None = msgspec.field(default=None, name="minimumRSAKeySize")
    minimum_ec_key_size: int | None = msgspec.field(default=None, name="minimumECKeySize")
    weak_signature_hashes: list[str] | None = msgspec.field(default=None, name="weakSignatureHashes")
    verify_chains: bool | None = msgspec.field(default=None, name="verifyChains")


class CertCheckObserved(msgspec.Struct, frozen=True, tag_field="kind", tag="CertCheckObserved/v1"):
    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    threshold_days: int
    selector: LabelSelector | None = None
    notification: NotificationSpec | None = None
    keys: list[str] | None = None  # which data keys to read: names or glob patterns
    configmap_selector: LabelSelector | None = None  # ConfigMaps to read too (None: none)
    policy: HygienePolicy | None = None  # None: the defaults
    # The status as last written, passed through untouched: the evaluator's diff base.
    status: msgspec.Raw = msgspec.Raw(b"null")
    # A ClusterCertCheck's share of one namespace (its name then ``clustercertcheck/<name>``, see
    # services/domain/clusterchecks.py): the cluster-scoped sources it reads (subject kind tokens; in the
    # share of subjects.CLUSTER_NAMESPACE only), and its namespace selector, checked like the others.
    cluster_sources: list[str] | None = None
    namespace_selector: LabelSelector | None = None


class ObjectDeleted(msgspec.Struct, frozen=True, tag_field="kind", tag="ObjectDeleted/v1"):
    object_kind: str  # subjects.KIND_SECRET, KIND_CONFIGMAP or KIND_CERTCHECK
    namespace: str
    name: str
    uid: str
    resource_version: str


ObjectEvent = (
    SecretObserved
    | ConfigMapObserved
    | ClusterSourceObserved
    | CertificateObserved
    | CertCheckObserved
    | ObjectDeleted
)


# ---------------------------------------------------------------------------------------------------
# The CertCheck status (the same struct is written to Kubernetes, hence camelCase)
# ---------------------------------------------------------------------------------------------------


class Condition(msgspec.Struct, frozen=True, rename="camel"):
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: str
    observed_generation: int = 0


class CertificateStatus(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    name: str  # the Secret (or the ConfigMap, when kind says so)
    key: str  # the data key
    index: int  # position in the key's chain or bundle (0 = first)
    state: State
    active: bool  # the certificate is valid right now (always written, even when False)
    kind: str = "Secret"  # or "ConfigMap"; omitted when Secret
    not_before: str | None = None
    not_after: str | None = None
    days_remaining: int | None = None
    subject: str | None = None
    issuer: str | None = None
    serial_number: str | None = None
    fingerprint: str | None = None
    dns_names: list[str] | None = None
    reason: str | None = None  # why the entry is Invalid
    key_algorithm: str | None = None
    key_size: int | None = None
    signature_algorithm: str | None = None
    problems: list[str] | None = None  # what the CertCheck's policy finds wrong (weak, broken chain)
    origin: str | None = None  # where in the key's value (a kubeconfig's user or cluster)
    namespace: str | None = None  # in a ClusterCertCheck's status only (None there: cluster-scoped)


class NotificationFailure(msgspec.Struct, frozen=True, rename="camel"):
    target: str
    reason: str
    since: str


class CertCheckStatus(msgspec.Struct, frozen=True, rename="camel"):
    observed_generation: int = 0
    target_secrets_count: int = 0
    target_certs_count: int = 0
    valid_count: int = 0
    expiring_soon_count: int = 0
    expired_count: int = 0
    not_yet_valid_count: int = 0
    invalid_count: int = 0
    renewal_overdue_count: int = 0
    weak_count: int = 0  # certificates with a key or signature the policy calls weak
    broken_chain_count: int = 0
    earliest_not_after: str | None = None
    earliest_certificate: str | None = None
    certificates: list[CertificateStatus] = []
    certificates_omitted: int = 0
    conditions: list[Condition] = []
    # When the status was last written: whenever anything in it changes, and at least every resync.
    last_evaluation_time: str | None = None
    # Written by the notifier only (the recorder never sends this field): targets failing for good.
    notification_failures: list[NotificationFailure] | None = None


class NamespaceSummary(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    """One selected namespace in a ClusterCertCheck's status."""

    namespace: str
    target_certs_count: int = 0
    expiring_soon_count: int = 0
    expired_count: int = 0
    invalid_count: int = 0
    renewal_overdue_count: int = 0
    weak_count: int = 0
    broken_chain_count: int = 0
    earliest_not_after: str | None = None


class ClusterCertCheckStatus(msgspec.Struct, frozen=True, rename="camel"):
    """A ClusterCertCheck's status: the totals of every selected namespace (and of the cluster-scoped
    sources), the most urgent namespaces and certificates (bounded), and the conditions of them all."""

    observed_generation: int = 0
    namespaces_count: int = 0
    target_secrets_count: int = 0
    target_certs_count: int = 0
    valid_count: int = 0
    expiring_soon_count: int = 0
    expired_count: int = 0
    not_yet_valid_count: int = 0
    invalid_count: int = 0
    renewal_overdue_count: int = 0
    weak_count: int = 0
    broken_chain_count: int = 0
    earliest_not_after: str | None = None
    earliest_certificate: str | None = None
    namespaces: list[NamespaceSummary] = []
    namespaces_omitted: int = 0
    certificates: list[CertificateStatus] = []
    certificates_omitted: int = 0
    conditions: list[Condition] = []
    last_evaluation_time: str | None = None
    # certcheck's bookkeeping: the revision of the namespaces' results this status merges (a write
    # merging older ones is not made).
    merged_revision: int = 0


# ---------------------------------------------------------------------------------------------------
# Results (published by the evaluator, applied by the recorder)
# ---------------------------------------------------------------------------------------------------


class AnnotationPatch(msgspec.Struct, frozen=True):
    """Set (str) or remove (None) certcheck's annotations on one Secret."""

    namespace: str
    name: str
    uid: str
    annotations: dict[str, str | None]
    # The Secret's resourceVersion as the evaluator saw it: a patch computed from a newer one (someone
    # edited the annotations since certcheck wrote them) is a repair, never skipped as a repeat.
    resource_version: str = ""


class EventIntent(msgspec.Struct, frozen=True):
    """A Kubernetes Event to emit once per occurrence.

    ``dedup_key`` names the Event (object, reason, certificate), so emitting it twice is a no-op.
    ``occurrence`` says which change it is: for a Secret the transition (state and notAfter before, state
    after), for a CertCheck its resourceVersion as evaluated. The same change seen again (a redelivery, a
    stale evaluation, certcheck's annotations deleted by hand) has the same occurrence and is dropped; a
    genuine repeat (the state left and came back) has a new one and increments the Event's count.
    """

    namespace: str
    involved_api_version: str
    involved_kind: str
    involved_name: str
    involved_uid: str
    type: str  # Normal | Warning
    reason: str
    message: str
    dedup_key: str
    occurrence: str = ""


class EvaluationResult(msgspec.Struct, frozen=True, tag_field="kind", tag="EvaluationResult/v1"):
    namespace: str
    name: str
    uid: str
    generation: int
    evaluated_at: str
    # The objects-stream sequence the evaluation saw: a result never replaces a newer one.
    view_seq: int
    status: CertCheckStatus
    status_changed: bool
    annotation_patches: list[AnnotationPatch] = []
    next_due: str | None = None
    notification: NotificationSpec | None = None
    threshold_days: int = 0
    resource_version: str = ""  # the CertCheck's, as evaluated (a status edited by hand since is put back)
    # For a CertCheck with notification targets, its most urgent certificates as the notifier plans
    # from them: more than the status lists. None: the status's list (a failed evaluation's, or a
    # result of an older evaluator).
    notable: list[CertificateStatus] | None = None


class CertCheckRemoved(msgspec.Struct, frozen=True, tag_field="kind", tag="CertCheckRemoved/v1"):
    namespace: str
    name: str
    uid: str
    view_seq: int


class AnnotationCleanup(msgspec.Struct, frozen=True, tag_field="kind", tag="AnnotationCleanup/v1"):
    """A Secret no CertCheck covers any more: remove what certcheck wrote on it."""

    view_seq: int
    patch: AnnotationPatch


ResultMessage = EvaluationResult | CertCheckRemoved | AnnotationCleanup


class Due(msgspec.Struct, frozen=True, tag_field="kind", tag="Due/v1"):
    """Fired by the server when a CertCheck's schedule comes due."""

    namespace: str
    name: str
    due_at: str
    attempt: int = 0  # a retry of an evaluation that failed: how many failed before it


# ---------------------------------------------------------------------------------------------------
# Notifications (sent by the notifier; the webhook body is this JSON)
# ---------------------------------------------------------------------------------------------------


class CertificateNotice(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    secret: str  # the Secret, or the ConfigMap when kind says so
    key: str
    index: int
    state: str
    # "firing" (entered a notifying state), "repeat" (still in it), "resolved" (left it), "reminder" (a
    # remindAt mark before its notAfter passed)
    change: str
    kind: str = "Secret"  # or "ConfigMap"; omitted when Secret
    previous_state: str | None = None
    not_after: str | None = None
    days_remaining: int | None = None
    subject: str | None = None
    issuer: str | None = None
    serial_number: str | None = None
    reason: str | None = None


class ExpiryNotification(
    msgspec.Struct, frozen=True, rename="camel", tag_field="kind", tag="ExpiryNotification/v1"
):
    """The body of a webhook notification (documented in docs/notifications.md)."""

    delivery_id: str
    namespace: str
    certcheck: str
    target: str
    threshold_days: int | None
    certificates: list[CertificateNotice]


# Shared encoders/decoders: building them once is what makes msgspec fast.
encoder = msgspec.json.Encoder()
object_decoder = msgspec.json.Decoder(ObjectEvent)
result_decoder = msgspec.json.Decoder(ResultMessage)
due_decoder = msgspec.json.Decoder(Due)
kube_event_decoder = msgspec.json.Decoder(EventIntent)
status_decoder = msgspec.json.Decoder(CertCheckStatus | None)
