"""What a service process does not import: a third of a small process's memory is libraries it never
calls. Applied by ``services/__init__.py``, before anything imports nats-py or the kubernetes package.

- nats-py imports aiohttp, for its WebSocket transport, whenever aiohttp is installed (the kubernetes
  package brings it). certcheck connects over TCP and TLS only: aiohttp stays out (~9 MiB a process).
  A ``ws://`` NATS URL fails with nats-py's own message that aiohttp is not installed.
- ``import kubernetes.client`` runs ``kubernetes/__init__.py`` first, which imports every part of the
  package: the dynamic client, streams (websocket-client), informers (pydantic), and ``kubernetes.config``,
  whose kubeconfig loader imports requests, oauthlib and yaml. A service sends raw requests through the
  ApiClient and, in a cluster, loads the in-cluster config only: ~15 MiB and 0.3 s of CPU a process.
  These package ``__init__`` modules run only when something reads a name they define (the kubectl
  plugin's ``config.load_kube_config``): their submodules import as usual without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

OPTIONAL_UNUSED = ("aiohttp",)
DEFERRED_PACKAGES = ("kubernetes", "kubernetes.config")


def keep_out(name: str) -> None:
    """Make ``import name`` raise ImportError, as if it were not installed (unless already imported)."""
    sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def defer_package_init(name: str) -> None:
    """Register package ``name`` without running its ``__init__``: ``import name.sub`` imports only that
    submodule; the first read of any other name of the package runs the ``__init__`` then."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def __getattr__(attr: str) -> Any:
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")  # ``from name import sub``
        if package.__dict__.pop("__getattr__", None) is None:
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")
        loader.exec_module(package)
        return getattr(package, attr)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = package
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, package)


def lean() -> None:
    for name in OPTIONAL_UNUSED:
        keep_out(name)
    for name in DEFERRED_PACKAGES:
        defer_package_init(name)


def loaded(module: types.ModuleType) -> bool:
    """Whether ``module``'s own code has run (a deferred package's ``__init__`` has not, until needed)."""
    return "__getattr__" not in module.__dict__
