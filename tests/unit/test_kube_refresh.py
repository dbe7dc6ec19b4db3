"""The credentials' refresh hook runs at most every few seconds, not before every request."""

from __future__ import annotations

import pytest
from kubernetes import client

from services.common import kube


def _configuration_with_a_self_installing_hook(calls: list[int]) -> client.Configuration:
    """Like a kubeconfig's hook: each call sets the configuration again, the hook included."""
    configuration = client.Configuration()

    def hook(target: client.Configuration) -> None:
        calls.append(1)
        target.refresh_api_key_hook = hook

    configuration.refresh_api_key_hook = hook
    return configuration


def test_the_refresh_hook_runs_once_for_many_requests_in_a_row() -> None:
    calls: list[int] = []
    configuration = _configuration_with_a_self_installing_hook(calls)
    kube.throttle_refresh(configuration)
    for _ in range(100):
        configuration.refresh_api_key_hook(configuration)
    assert len(calls) == 1


def test_the_refresh_hook_runs_again_once_the_interval_has_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    configuration = _configuration_with_a_self_installing_hook(calls)
    kube.throttle_refresh(configuration)
    configuration.refresh_api_key_hook(configuration)
    monkeypatch.setattr(kube, "REFRESH_CHECK_SECONDS", 0.0)
    configuration.refresh_api_key_hook(configuration)
    configuration.refresh_api_key_hook(configuration)
    assert len(calls) == 3
    monkeypatch.setattr(kube, "REFRESH_CHECK_SECONDS", 60.0)
    for _ in range(10):
        configuration.refresh_api_key_hook(configuration)
    assert len(calls) == 3  # the hook installed itself again, and the throttle stayed in front of it


def test_a_configuration_without_a_hook_is_left_alone() -> None:
    configuration = client.Configuration()
    kube.throttle_refresh(configuration)
    assert configuration.refresh_api_key_hook is None
