"""The nats-server the local environment, the tests and the benchmarks start: its soft memory limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.cluster import DEFAULT_NATS_GOMEMLIMIT, NatsServer


def test_nats_server_starts_with_a_soft_memory_limit_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CERTCHECK_NATS_GOMEMLIMIT", raising=False)
    assert NatsServer(tmp_path)._env()["GOMEMLIMIT"] == DEFAULT_NATS_GOMEMLIMIT == "64MiB"


def test_the_soft_memory_limit_can_be_changed_or_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CERTCHECK_NATS_GOMEMLIMIT", "512MiB")
    assert NatsServer(tmp_path, users={"admin": "pwx"})._env()["GOMEMLIMIT"] == "512MiB"
    monkeypatch.setenv("CERTCHECK_NATS_GOMEMLIMIT", "")
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    assert "GOMEMLIMIT" not in NatsServer(tmp_path)._env()
