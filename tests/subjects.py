"""Subjects of one namespace's objects and schedules as an install with the default partition count
lays them out (every test stack uses the default)."""

from __future__ import annotations

from schemas import subjects
from schemas.streams import DEFAULT_PARTITIONS


def partition(namespace: str) -> int:
    return subjects.partition_of(namespace, DEFAULT_PARTITIONS)


def object_subject(kind: str, namespace: str, name: str) -> str:
    return subjects.object_subject(partition(namespace), kind, namespace, name)


def schedule_subject(namespace: str, certcheck: str) -> str:
    return subjects.schedule_subject(partition(namespace), namespace, certcheck)


def due_subject(namespace: str, certcheck: str) -> str:
    return subjects.due_subject(partition(namespace), namespace, certcheck)
