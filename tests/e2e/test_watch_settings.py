"""What the watcher watches: CERTCHECK_SECRET_TYPES, CERTCHECK_SECRET_LABEL_SELECTOR,
CERTCHECK_WATCH_CONFIGMAPS and CERTCHECK_CONFIGMAP_LABEL_SELECTOR, each on a real watcher of its own
(on ``watcher_stack``: the shared stack's watcher holds the lease and has settings of its own).

What was published is read from the objects stream itself. An object outside the setting is created
*before* one inside it that goes through the same watch (or would, were the setting ignored): once the
one inside is in the stream, the one outside would be there too, had it been delivered."""

from __future__ import annotations

from devcluster.stack import Stack
from schemas.subjects import KIND_CONFIGMAP as CM
from schemas.subjects import KIND_SECRET as SECRET
from tests.conftest import Cluster, wait_for
from tests.e2e.watchers import (  # noqa: F401 (fixtures)
    ObjectsStream,
    cluster,
    connected_watches,
    create_configmap,
    create_secret,
    ns,
    objects,
    relabel,
    stack,
    start_watcher,
)

TLS = "kubernetes.io/tls"


def test_only_the_secret_types_listed_are_watched(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    instance = "watcher-types"
    watcher = start_watcher(stack, instance, {"CERTCHECK_SECRET_TYPES": "Opaque, example.com/bundle"})
    try:
        create_secret(cluster, ns, "tls", TLS)  # the default type, not listed
        create_secret(cluster, ns, "other", "example.com/other")
        create_secret(cluster, ns, "opaque", "Opaque")
        create_secret(cluster, ns, "bundle", "example.com/bundle")

        found = objects.wait_published(ns, (SECRET, "opaque"), (SECRET, "bundle"))
        assert found == {(SECRET, "opaque"), (SECRET, "bundle")}
        # One watch per listed type, filtered by the API server; none of the default type, none of all.
        assert {w for w in connected_watches(stack, instance) if w.startswith("secrets/")} == {
            "secrets/Opaque",
            "secrets/example.com/bundle",
        }
    finally:
        watcher.stop()


def test_a_star_among_the_secret_types_watches_every_type(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    instance = "watcher-all-types"
    watcher = start_watcher(stack, instance, {"CERTCHECK_SECRET_TYPES": "kubernetes.io/tls,*"})
    try:
        for name, secret_type in (("tls", TLS), ("opaque", "Opaque"), ("other", "example.com/other")):
            create_secret(cluster, ns, name, secret_type)

        found = objects.wait_published(ns, (SECRET, "tls"), (SECRET, "opaque"), (SECRET, "other"))
        assert found == {(SECRET, "tls"), (SECRET, "opaque"), (SECRET, "other")}
        assert {w for w in connected_watches(stack, instance) if w.startswith("secrets/")} == {"secrets/all"}
    finally:
        watcher.stop()


def test_the_secret_label_selector_narrows_every_secret_watch(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    instance = "watcher-secret-selector"
    env = {"CERTCHECK_SECRET_TYPES": f"{TLS},Opaque", "CERTCHECK_SECRET_LABEL_SELECTOR": "certcheck in (on)"}
    watcher = start_watcher(stack, instance, env)
    try:
        create_secret(cluster, ns, "tls-unlabelled", TLS)
        create_secret(cluster, ns, "opaque-off", "Opaque", labels={"certcheck": "off"})
        create_secret(cluster, ns, "tls-on", TLS, labels={"certcheck": "on"})
        create_secret(cluster, ns, "opaque-on", "Opaque", labels={"certcheck": "on"})

        found = objects.wait_published(ns, (SECRET, "tls-on"), (SECRET, "opaque-on"))
        assert found == {(SECRET, "tls-on"), (SECRET, "opaque-on")}

        # A Secret that comes to match is published then; one that stops matching is gone for certcheck.
        relabel(cluster, ns, SECRET, "tls-unlabelled", {"certcheck": "on"})
        left_rv = relabel(cluster, ns, SECRET, "opaque-on", {"certcheck": "off"})
        objects.wait_published(ns, (SECRET, "tls-unlabelled"))
        wait_for(
            lambda: objects.version(ns, SECRET, "opaque-on") == f"deleted:{left_rv}",
            what="a tombstone for the Secret that left the selector",
        )
        assert objects.published(ns) == {(SECRET, "tls-on"), (SECRET, "tls-unlabelled")}
    finally:
        watcher.stop()


def test_watch_configmaps_false_publishes_no_configmap(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    # The control: by default, ConfigMaps are watched and this one is published.
    watcher = start_watcher(stack, "watcher-configmaps", {})
    try:
        create_configmap(cluster, ns, "seen")
        objects.wait_published(ns, (CM, "seen"))
        assert "configmaps" in connected_watches(stack, "watcher-configmaps")
    finally:
        watcher.stop()

    instance = "watcher-no-configmaps"
    watcher = start_watcher(stack, instance, {"CERTCHECK_WATCH_CONFIGMAPS": "false"})
    try:
        create_configmap(cluster, ns, "unseen")
        changed_rv = relabel(cluster, ns, CM, "seen", {"changed": "yes"})
        create_secret(cluster, ns, "sentinel", TLS)

        found = objects.wait_published(ns, (SECRET, "sentinel"))
        assert (CM, "unseen") not in found
        assert objects.version(ns, CM, "seen") != changed_rv  # nor the change of the one seen before
        up = {"secrets/kubernetes.io/tls", "certchecks"}
        watches = wait_for(
            lambda: (w := connected_watches(stack, instance)) >= up and w, what="the watches up"
        )
        assert "configmaps" not in watches  # no ConfigMap watch at all
    finally:
        watcher.stop()


def test_the_configmap_label_selector_narrows_the_configmap_watch_only(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    selector = {"CERTCHECK_CONFIGMAP_LABEL_SELECTOR": "trust=shop"}
    watcher = start_watcher(stack, "watcher-configmap-selector", selector)
    try:
        create_configmap(cluster, ns, "plain")
        create_configmap(cluster, ns, "other", labels={"trust": "other"})
        create_configmap(cluster, ns, "bundle", labels={"trust": "shop"})
        create_secret(cluster, ns, "unlabelled", TLS)  # Secrets are not narrowed by it

        found = objects.wait_published(ns, (CM, "bundle"), (SECRET, "unlabelled"))
        assert found == {(CM, "bundle"), (SECRET, "unlabelled")}

        relabel(cluster, ns, CM, "plain", {"trust": "shop"})
        objects.wait_published(ns, (CM, "plain"))
        assert objects.published(ns) == {(CM, "bundle"), (CM, "plain"), (SECRET, "unlabelled")}
    finally:
        watcher.stop()


def test_a_watcher_restarted_with_a_wider_secret_label_selector_publishes_what_it_now_selects(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    watcher = start_watcher(stack, "watcher-narrow", {"CERTCHECK_SECRET_LABEL_SELECTOR": "certcheck=on"})
    try:
        create_secret(cluster, ns, "off", TLS, labels={"certcheck": "off"})
        create_secret(cluster, ns, "on", TLS, labels={"certcheck": "on"})
        objects.wait_published(ns, (SECRET, "on"))
    finally:
        watcher.stop()  # saves how far its watches got

    selector = {"CERTCHECK_SECRET_LABEL_SELECTOR": "certcheck in (on,off)"}
    watcher = start_watcher(stack, "watcher-wide", selector)
    try:
        create_secret(cluster, ns, "sentinel", TLS, labels={"certcheck": "on"})
        objects.wait_published(ns, (SECRET, "sentinel"))
        objects.wait_published(ns, (SECRET, "off"), timeout=10)
    finally:
        watcher.stop()


def test_a_watcher_restarted_watching_less_tombstones_what_it_no_longer_watches(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    wide = {
        "CERTCHECK_SECRET_TYPES": f"{TLS},Opaque",
        "CERTCHECK_WATCH_CONFIGMAPS": "true",
        "CERTCHECK_SECRET_LABEL_SELECTOR": "",
    }
    watcher = start_watcher(stack, "watcher-wide-first", wide)
    try:
        create_secret(cluster, ns, "tls-in", TLS, labels={"certcheck": "on"})
        create_secret(cluster, ns, "tls-out", TLS, labels={"certcheck": "off"})
        create_secret(cluster, ns, "opaque", "Opaque", labels={"certcheck": "on"})
        create_configmap(cluster, ns, "bundle")
        # A wide watcher lists and publishes every Secret and ConfigMap of the session's control plane
        # first: thousands, left by other tests (20 s was once too little under a full suite's load).
        objects.wait_published(
            ns, (SECRET, "tls-in"), (SECRET, "tls-out"), (SECRET, "opaque"), (CM, "bundle"), timeout=60
        )
    finally:
        watcher.stop()
    kept = objects.version(ns, SECRET, "tls-in")

    narrow = {
        "CERTCHECK_SECRET_TYPES": TLS,
        "CERTCHECK_WATCH_CONFIGMAPS": "false",
        "CERTCHECK_SECRET_LABEL_SELECTOR": "certcheck=on",
    }
    watcher = start_watcher(stack, "watcher-narrow-then", narrow)
    try:
        wait_for(
            lambda: objects.published(ns) == {(SECRET, "tls-in")},
            timeout=20,
            what="a tombstone for each object no longer watched",
        )
        assert objects.version(ns, SECRET, "tls-in") == kept  # still watched: not published again
    finally:
        watcher.stop()
