"""certcheck services: watcher, evaluator, recorder, notifier, and their shared plumbing."""

import os as _os
import signal as _signal
import sys as _sys

# A SIGTERM while a service is still importing (a rollout right after a start) is a clean stop too:
# exit 0 at once. services.common.runtime installs the real handler as soon as the event loop runs.
# os._exit, not sys.exit: a SystemExit raised where importlib runs a callback is printed and ignored,
# and the service went on starting with SIGTERM spent.
if _sys.argv[:1] == ["-m"] and _signal.getsignal(_signal.SIGTERM) is _signal.SIG_DFL:  # python -m services.x
    _signal.signal(_signal.SIGTERM, lambda *_: _os._exit(0))

# Before anything imports nats-py or kubernetes: leave out what no service calls (services/imports.py).
from services import imports as _imports

_imports.lean()
