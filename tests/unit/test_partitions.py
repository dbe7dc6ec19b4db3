"""How partitions are divided among replicas, and which partition a namespace is in."""

from __future__ import annotations

import pytest

from schemas import subjects
from services.common.partitions import assign

PARTITIONS = 16


def _owners(assignment: dict[str, set[int]]) -> dict[int, str]:
    return {partition: member for member, owned in assignment.items() for partition in owned}


@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 5, 7, 16, 20])
def test_every_partition_has_exactly_one_owner_and_shares_differ_by_at_most_one(replicas: int) -> None:
    members = [f"evaluator-{i}" for i in range(replicas)]
    assignment = assign(PARTITIONS, members)
    owned = sorted(p for share in assignment.values() for p in share)
    assert owned == list(range(PARTITIONS))
    sizes = [len(share) for share in assignment.values()]
    assert max(sizes) - min(sizes) <= 1


def test_every_replica_computes_the_same_assignment_whatever_order_it_lists_the_members_in() -> None:
    members = ["b-2", "a-1", "c-3"]
    assert assign(PARTITIONS, members) == assign(PARTITIONS, list(reversed(members)))
    assert assign(PARTITIONS, members) == assign(PARTITIONS, [*members, "a-1"])


@pytest.mark.parametrize("trial", range(10))
def test_a_fourth_replica_joining_takes_a_share_moving_few_other_partitions(trial: int) -> None:
    three = [f"evaluator-{trial}-{i}" for i in range(3)]
    before = _owners(assign(PARTITIONS, three))
    after = _owners(assign(PARTITIONS, [*three, f"joining-{trial}"]))
    moved = [p for p in range(PARTITIONS) if before[p] != after[p]]
    taken = [p for p in moved if after[p] == f"joining-{trial}"]
    assert len(taken) == PARTITIONS // 4
    assert len(moved) <= PARTITIONS // 2  # the new share, and a few to even the others out


@pytest.mark.parametrize("trial", range(10))
def test_a_replica_leaving_hands_its_share_over_and_the_others_keep_most_of_theirs(trial: int) -> None:
    three = [f"evaluator-{trial}-{i}" for i in range(3)]
    before = _owners(assign(PARTITIONS, three))
    after = _owners(assign(PARTITIONS, three[:2]))
    left = [p for p in range(PARTITIONS) if before[p] == three[2]]
    moved = [p for p in range(PARTITIONS) if before[p] != after[p]]
    assert set(left) <= set(moved)
    assert len(moved) <= len(left) + PARTITIONS // 4


def test_no_members_own_nothing() -> None:
    assert assign(PARTITIONS, []) == {}


def test_a_namespace_is_in_the_partition_nats_server_would_map_it_to() -> None:
    # FNV-1a 32 as nats-server's {{partition(n, token)}} computes it: 1498229191 for "Hello world".
    assert subjects.partition_of("Hello world", 1 << 31) == 1498229191 % (1 << 31)
    assert subjects.partition_of("Hello world", 7) == 1498229191 % 7
    counts = [0] * PARTITIONS
    for i in range(1600):
        counts[subjects.partition_of(f"team-{i}", PARTITIONS)] += 1
    assert min(counts) > 50  # namespaces spread over every partition


def test_an_object_subject_names_its_partition_and_the_old_layout_is_refused() -> None:
    subject = subjects.object_subject(3, subjects.KIND_SECRET, "ns", "web.tls")
    assert subjects.split_object_subject(subject) == (3, "secret", "ns", "web.tls")
    with pytest.raises(ValueError):
        subjects.split_object_subject("certcheck.v1.objects.secret.ns.web.tls")
