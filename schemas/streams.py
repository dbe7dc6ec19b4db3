"""JetStream stream and consumer definitions: the one place that says how the bus is laid out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from schemas import subjects

# Headers certcheck sets on its messages.
HDR_MSG_ID = "Nats-Msg-Id"
HDR_SCHEDULE = "Nats-Schedule"
HDR_SCHEDULE_TARGET = "Nats-Schedule-Target"
HDR_MSG_TTL = "Nats-TTL"
HDR_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
HDR_RESOURCE_VERSION = "Certcheck-Resource-Version"
HDR_DIGEST = "Certcheck-Digest"
HDR_SCOPE = "Certcheck-Scope"  # the watch that observed the object (e.g. secret.kubernetes.io/tls)
HDR_VIEW_SEQ = "Certcheck-View-Seq"
HDR_DEAD_REASON = "Certcheck-Dead-Reason"
HDR_DEAD_STREAM_SEQ = "Certcheck-Dead-Stream-Seq"


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    description: str
    max_msgs_per_subject: int = -1
    allow_msg_schedules: bool = False
    allow_msg_ttl: bool = False
    duplicate_window_seconds: float = 120.0
    max_age_seconds: float | None = None
    max_bytes: int = -1  # -1: no size limit
    work_queue: bool = False  # a message is gone once acknowledged


# The observed state of the cluster: one message per object (last value per subject), tombstones
# for deletions. Any evaluator replica rebuilds its view by reading it from the start.
OBJECTS = StreamSpec(
    name="CERTCHECK_OBJECTS",
    subjects=(subjects.OBJECTS_ALL,),
    description="Observed CertChecks and Secrets (certificate material only), last value per object",
    max_msgs_per_subject=1,
    allow_msg_ttl=True,
)

# Evaluation results per CertCheck and annotation clean-ups per Secret (last value per subject, so a
# newer result supersedes one the recorder has not applied yet).
RESULTS = StreamSpec(
    name="CERTCHECK_RESULTS",
    subjects=(subjects.RESULTS_ALL, subjects.CLEANUP_ALL),
    description="Evaluation results per CertCheck and annotation clean-ups per Secret",
    max_msgs_per_subject=1,
    allow_msg_ttl=True,
)

# Delayed re-evaluations: one pending schedule per CertCheck, and the messages it fires.
TRIGGERS = StreamSpec(
    name="CERTCHECK_TRIGGERS",
    subjects=(subjects.SCHEDULE_ALL, subjects.DUE_ALL),
    description="Per-CertCheck schedules (ADR-51) and the due messages they fire",
    max_msgs_per_subject=1,
    allow_msg_schedules=True,
    allow_msg_ttl=True,  # the marker a cancelled schedule leaves expires
)

# Kubernetes Events to write, one message per Event occurrence (Nats-Msg-Id: the Event's key and its
# occurrence). Apart from the results: a result superseded by a newer one must not take its Events along,
# and an Event whose write keeps failing (429, a 403 while RBAC is being fixed) is retried on its own.
KUBE_EVENTS = StreamSpec(
    name="CERTCHECK_KUBE_EVENTS",
    subjects=(subjects.KUBE_EVENTS_ALL,),
    description="Kubernetes Events to write (work queue: removed once written)",
    work_queue=True,
)

# nats-server keeps a schedule's time in int64 nanoseconds: one set after 2262-04-11 fires at once.
# Nothing is scheduled beyond this; the periodic resync evaluates such a CertCheck anyway.
SCHEDULE_HORIZON = datetime(2262, 1, 1, tzinfo=UTC)

# Messages that could not be processed, with the reason in a header; kept a week for inspection.
DEADLETTER = StreamSpec(
    name="CERTCHECK_DEADLETTER",
    subjects=(subjects.DEADLETTER_ALL,),
    description="Messages that could not be processed (header Certcheck-Dead-Reason says why)",
    max_age_seconds=7 * 24 * 3600,
)

# The public expiry events (schemas/events.py, docs/events.md): one CloudEvent per fact, kept for
# replay by age and size (settings CERTCHECK_EVENTS_MAX_AGE_DAYS and CERTCHECK_EVENTS_MAX_BYTES). The
# duplicate window is long, as a fact's id is its Nats-Msg-Id: a fact derived again after a crash, within
# the hour, is kept once.
EVENTS_DEFAULT_MAX_AGE_DAYS = 90
EVENTS_DEFAULT_MAX_BYTES = 8 * 1024**3


def events_stream(
    max_age_days: float = EVENTS_DEFAULT_MAX_AGE_DAYS, max_bytes: int = EVENTS_DEFAULT_MAX_BYTES
) -> StreamSpec:
    return StreamSpec(
        name="CERTCHECK_EVENTS",
        subjects=(f"{subjects.PREFIX}.events.>",),
        description="Certificate lifecycle events for other systems (CloudEvents 1.0, docs/events.md)",
        duplicate_window_seconds=3600.0,
        max_age_seconds=max_age_days * 24 * 3600,
        max_bytes=max_bytes,
    )


EVENTS = events_stream()

ALL_STREAMS = (OBJECTS, RESULTS, TRIGGERS, KUBE_EVENTS, DEADLETTER, EVENTS)

# Key-value buckets (JetStream-backed, file storage).
# The recorder's durable "applied up to" mark per results subject: a redelivered result is not re-applied.
RECORDER_APPLIED_BUCKET = "certcheck_recorder_applied"


@dataclass(frozen=True)
class AppliedMark:
    """A value of the recorder's applied bucket: ``<seq>`` or ``<seq> <resourceVersion>``, the latter
    when applying that result wrote the CertCheck's status (the version the write made)."""

    seq: int
    status_version: str = ""

    def encode(self) -> bytes:
        return f"{self.seq} {self.status_version}".encode() if self.status_version else str(self.seq).encode()

    @classmethod
    def decode(cls, value: bytes | None) -> AppliedMark:
        seq, _, version = (value or b"0").decode().partition(" ")
        return cls(int(seq or "0"), version)


# The watcher's last fully published resourceVersion per resource: a restart resumes its watches there.
WATCHER_STATE_BUCKET = "certcheck_watcher"

# The last result of each share of a ClusterCertCheck (``<name>.<namespace>``), merged by the recorder
# into the ClusterCertCheck's status.
CLUSTER_SHARES_BUCKET = "certcheck_cluster_shares"

# Leader leases: one active replica of a service that must not run twice at once (the watcher).
LEASE_BUCKET = "certcheck_leases"

# What each CertCheck last told of its certificates in the public events (one entry per CertCheck).
EVENT_SLOTS_BUCKET = "certcheck_event_slots"

# The notifier's durable state per CertCheck: what each target was told, and any pending delivery.
NOTIFIER_STATE_BUCKET = "certcheck_notifier"

# Partitions: how many, fixed when the objects stream is created (its metadata says, so every service
# agrees whatever its own setting), and who owns which (leases per partition, per group of replicas).
PARTITIONS_METADATA = "certcheck.dev/partitions"
PARTITIONS_BUCKET = "certcheck_partitions"
DEFAULT_PARTITIONS = 16

# Durable consumers (shared by every replica of the service that binds them). The evaluator's is one
# per partition, bound only by the replica holding that partition's lease.
EVALUATOR_DUE_CONSUMER = "evaluator-due"


def evaluator_due_consumer(partition: int) -> str:
    return f"{EVALUATOR_DUE_CONSUMER}-{partition}"


RECORDER_CONSUMER = "recorder"
RECORDER_EVENTS_CONSUMER = "recorder-events"
NOTIFIER_CONSUMER = "notifier"
