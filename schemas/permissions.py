"""What each service may publish and subscribe to on NATS: least privilege, from the wire contract.

``nats_authorization()`` renders the nats-server ``authorization`` block shipped as ``k8s/nats/auth.conf``
(a test keeps that file equal to this module) and used by the test suite's nats-server, so every
end-to-end test runs each service under exactly these permissions. Passwords are not here: each user's
is read from an environment variable of the server, ``CERTCHECK_NATS_<USER>_PASSWORD``.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas import subjects
from schemas.streams import (
    ALL_STREAMS,
    CLUSTER_SHARES_BUCKET,
    DEADLETTER,
    EVENT_SLOTS_BUCKET,
    EVENTS,
    KUBE_EVENTS,
    LEASE_BUCKET,
    NOTIFIER_CONSUMER,
    NOTIFIER_STATE_BUCKET,
    OBJECTS,
    PARTITIONS_BUCKET,
    RECORDER_APPLIED_BUCKET,
    RECORDER_CONSUMER,
    RECORDER_EVENTS_CONSUMER,
    RESULTS,
    TRIGGERS,
    WATCHER_STATE_BUCKET,
)

ADMIN_USER = "admin"  # full access: operators, and the test harness


def inbox_prefix(user: str) -> str:
    """Each service receives replies and push deliveries under its own inbox prefix, so no service can
    subscribe to another's replies (which carry stream and key-value contents)."""
    return f"_INBOX_{user}"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]


def _stream_setup() -> tuple[str, ...]:
    """The watcher creates the streams, and adds to them what a newer release needs."""
    names = [stream.name for stream in ALL_STREAMS]
    return (
        "$JS.API.INFO",
        *(f"$JS.API.STREAM.{verb}.{name}" for name in names for verb in ("INFO", "CREATE", "UPDATE")),
    )


def _stream_lookup() -> tuple[str, ...]:
    """A service that only reads the streams' configuration (and waits until they exist)."""
    return ("$JS.API.INFO", *(f"$JS.API.STREAM.INFO.{stream.name}" for stream in ALL_STREAMS))


def _durable(stream: str, consumer: str) -> tuple[str, ...]:
    api = "$JS.API.CONSUMER"
    return (
        f"{api}.CREATE.{stream}.{consumer}",
        f"{api}.CREATE.{stream}.{consumer}.>",
        f"{api}.DURABLE.CREATE.{stream}.{consumer}",
        f"{api}.INFO.{stream}.{consumer}",
        f"{api}.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    )


def _partitioned_durables(stream: str) -> tuple[str, ...]:
    """Durable consumers of a stream whose names say their partition (``evaluator-due-3``): the
    service is the only durable reader of that stream, and the partition count is set at install, so
    the consumer token is a wildcard."""
    api = "$JS.API.CONSUMER"
    return (
        f"{api}.CREATE.{stream}.*",
        f"{api}.CREATE.{stream}.*.>",
        f"{api}.DURABLE.CREATE.{stream}.*",
        f"{api}.INFO.{stream}.*",
        f"{api}.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.*.>",
    )


def _ordered(stream: str) -> tuple[str, ...]:
    """An ordered (ephemeral, push) consumer that reads a whole stream and is recreated on gaps. No
    CONSUMER.DELETE, for anyone: it would let a service delete another's durable consumer (the server
    drops an ephemeral consumer of its own once it is unused)."""
    return (
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.FC.{stream}.>",
    )


def _view(stream: str) -> tuple[str, ...]:
    """An ephemeral pull consumer that reads a stream in order into a view (services/domain/follow.py),
    created again from where the view is when it loses its place. Its name is random: any consumer of
    the stream may be pulled from (no service has a durable one there)."""
    return (
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
    )


def _message_reads(stream: str) -> tuple[str, ...]:
    """Reading one message of a stream by sequence or subject (whether it is still there)."""
    return (
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    )


def _bucket(bucket: str) -> tuple[str, ...]:
    stream = f"KV_{bucket}"
    return (
        f"$KV.{bucket}.>",
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.CREATE.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    )


def _bucket_reads(bucket: str) -> tuple[str, ...]:
    """Reading another service's bucket, key by key, without writing it (nor creating it)."""
    return (f"$JS.API.STREAM.INFO.KV_{bucket}", *_message_reads(f"KV_{bucket}"))


def _subjects(*patterns: str) -> tuple[str, ...]:
    return patterns


SERVICE_PERMISSIONS: dict[str, Permissions] = {
    "watcher": Permissions(
        publish=(
            *_stream_setup(),
            *_subjects(subjects.OBJECTS_ALL, subjects.DEADLETTER_ALL),  # an object too large to publish
            *_ordered(OBJECTS.name),
            *_bucket(WATCHER_STATE_BUCKET),
            *_bucket(LEASE_BUCKET),
        ),
    ),
    "evaluator": Permissions(
        publish=(
            *_stream_lookup(),
            *_subjects(
                subjects.RESULTS_ALL,
                subjects.CLEANUP_ALL,
                subjects.SCHEDULE_ALL,
                subjects.KUBE_EVENTS_ALL,
                subjects.DEADLETTER_ALL,
                f"{subjects.PREFIX}.events.>",  # the public expiry events (schemas/events.py)
            ),
            *_partitioned_durables(TRIGGERS.name),
            *_view(OBJECTS.name),
            *_bucket(PARTITIONS_BUCKET),
            *_bucket(EVENT_SLOTS_BUCKET),
            *_bucket_reads(RECORDER_APPLIED_BUCKET),  # whether a status not as told was applied
            *_message_reads(OBJECTS.name),
            f"$JS.API.STREAM.MSG.GET.{RESULTS.name}",
            f"$JS.API.DIRECT.GET.{RESULTS.name}",
            f"$JS.API.DIRECT.GET.{RESULTS.name}.>",
            f"$JS.API.STREAM.MSG.GET.{TRIGGERS.name}",
            f"$JS.API.DIRECT.GET.{TRIGGERS.name}",
            f"$JS.API.DIRECT.GET.{TRIGGERS.name}.>",
            f"$JS.API.STREAM.MSG.GET.{DEADLETTER.name}",  # whether an object message was parked already
        ),
    ),
    "recorder": Permissions(
        publish=(
            *_stream_lookup(),
            subjects.DEADLETTER_ALL,
            *_durable(RESULTS.name, RECORDER_CONSUMER),
            *_durable(KUBE_EVENTS.name, RECORDER_EVENTS_CONSUMER),
            *_bucket(RECORDER_APPLIED_BUCKET),
            *_bucket(CLUSTER_SHARES_BUCKET),
            *_ordered(f"KV_{CLUSTER_SHARES_BUCKET}"),  # a merge reads every share of one ClusterCertCheck
        ),
    ),
    "notifier": Permissions(
        publish=(
            *_stream_lookup(),
            subjects.DEADLETTER_ALL,
            *_durable(RESULTS.name, NOTIFIER_CONSUMER),
            *_bucket(NOTIFIER_STATE_BUCKET),
        ),
    ),
    "exporter": Permissions(
        publish=(
            *_stream_lookup(),
            *_view(OBJECTS.name),
            *_message_reads(OBJECTS.name),
            *_bucket(PARTITIONS_BUCKET),
        )
    ),
}


# Other systems that subscribe to the public expiry events (docs/events.md): read the events stream
# through consumers of their own, nothing else.
SUBSCRIBER_USER = "subscriber"
SUBSCRIBER_PERMISSIONS = Permissions(
    publish=(
        "$JS.API.INFO",
        f"$JS.API.STREAM.INFO.{EVENTS.name}",
        *_message_reads(EVENTS.name),
        *_partitioned_durables(EVENTS.name),  # any durable name: every consumer of it is a subscriber's
        f"$JS.API.CONSUMER.DELETE.{EVENTS.name}.*",
        *_ordered(EVENTS.name),
    )
)

ALL_IN_ONE_USER = "all"  # ``certcheck all``: every service in one process, over one connection
# The users that create the streams and add what a newer release needs to them (never lowering
# anything: see services/common/bus.py). Every other service only looks them up, and waits for them.
STREAM_OWNERS = ("watcher", ALL_IN_ONE_USER)


def _union(*permissions: Permissions) -> Permissions:
    return Permissions(publish=tuple(dict.fromkeys(p for each in permissions for p in each.publish)))


# The users nats-server knows besides the admin: one per service, and the all-in-one process's.
NATS_USERS: dict[str, Permissions] = {
    **SERVICE_PERMISSIONS,
    ALL_IN_ONE_USER: _union(*SERVICE_PERMISSIONS.values()),
    SUBSCRIBER_USER: SUBSCRIBER_PERMISSIONS,
}


def password_variable(user: str) -> str:
    return f"CERTCHECK_NATS_{user.upper()}_PASSWORD"


def _allow(items: tuple[str, ...], indent: str) -> list[str]:
    return [f"{indent}allow: ["] + [f'{indent}  "{item}"' for item in items] + [f"{indent}]"]


def nats_authorization() -> str:
    """The nats-server ``authorization`` block: one user per service, the all-in-one's, the admin."""
    lines = [
        "# Generated from schemas/permissions.py (tests/unit/test_permissions.py keeps them equal):",
        "#   python -m schemas.permissions > k8s/nats/auth.conf",
        "# Each password comes from the server's environment: CERTCHECK_NATS_<USER>_PASSWORD.",
        "authorization {",
        "  users: [",
        f"    {{user: {ADMIN_USER}, password: ${password_variable(ADMIN_USER)}}}",
    ]
    for user, permissions in NATS_USERS.items():
        lines += [
            f"    {{user: {user}, password: ${password_variable(user)}, permissions: {{",
            "      publish: {",
            *_allow(permissions.publish, "        "),
            "      }",
            "      subscribe: {",
            *_allow((f"{inbox_prefix(user)}.>",), "        "),
            "      }",
            "    }}",
        ]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(nats_authorization(), end="")
