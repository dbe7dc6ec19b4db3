"""``certcheck <service>``: one command for every service."""

from __future__ import annotations

import sys

USAGE = (
    "usage: certcheck {watcher,evaluator,recorder,notifier,exporter,all} [options]  (SERVICE --help)\n"
    "  all: every service in one process (small clusters, make up)\n"
    "       certcheck admin streams [--apply]: how the streams differ from what this release wants\n"
    "       certcheck events [...] | certcheck history NAMESPACE/NAME: the public expiry events"
)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    service, rest = args[0], args[1:]
    if service == "watcher":
        from services.watcher.__main__ import run
    elif service == "evaluator":
        from services.evaluator.__main__ import run
    elif service == "recorder":
        from services.recorder.__main__ import run
    elif service == "exporter":
        from services.exporter.__main__ import run
    elif service == "notifier":
        from services.notifier.__main__ import run
    elif service == "all":
        from services.allinone import run
    elif service == "admin":
        from services.admin import run
    elif service in ("events", "history"):
        from services.eventlog import run

        run(args)
        return
    else:
        sys.exit(f"certcheck: unknown service {service!r}\n{USAGE}")
    run(rest)


if __name__ == "__main__":
    main()
