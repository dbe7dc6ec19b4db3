"""A watcher started on an objects stream an older release wrote (subjects without the partition token;
certificates as PEM, not facts) publishes everything again in the current layout and format, even when
its saved watch progress says nothing changed since."""

from __future__ import annotations

import msgspec
from nats.js.errors import NotFoundError

from devcluster.stack import Stack
from schemas.messages import CertSource, SecretObserved, object_decoder
from schemas.streams import (
    HDR_DIGEST,
    HDR_MSG_ID,
    HDR_RESOURCE_VERSION,
    HDR_SCOPE,
    OBJECTS,
    WATCHER_STATE_BUCKET,
)
from schemas.subjects import KIND_SECRET as SECRET
from services.watcher.publisher import WATCH_CONFIG_KEY
from tests import subjects as test_subjects
from tests.conftest import Cluster, wait_for, watcher_progress
from tests.e2e.watchers import (  # noqa: F401 (fixtures)
    CERT,
    ObjectsStream,
    cluster,
    create_secret,
    ns,
    objects,
    stack,
    start_watcher,
)

SCOPE = "secret.kubernetes.io/tls"  # the watch of the default Secret type


def test_objects_published_in_the_older_layout_are_replaced_and_published_again(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    instance = "watcher-layout"
    _publish_other_and_stop(stack, cluster, objects, ns, instance)

    # What a release before partitions left behind: "web" published under the older subject only, and
    # the watch progress saved past it (started again, the watcher would resume there, listing nothing).
    web = create_secret(cluster, ns, "web", "kubernetes.io/tls").metadata.resource_version
    older = f"certcheck.v1.objects.secret.{ns}.web"
    headers = {HDR_DIGEST: "older", HDR_RESOURCE_VERSION: web, HDR_SCOPE: SCOPE, HDR_MSG_ID: f"secret/{web}"}
    objects.run(objects.js.publish(older, b"{}", stream=OBJECTS.name, headers=headers))
    objects.run(_save_progress(objects, web))
    assert objects.published(ns) == {(SECRET, "other")}

    watcher = start_watcher(stack, instance, {})
    try:
        objects.wait_published(ns, (SECRET, "other"), (SECRET, "web"))
        current = objects.run(
            objects.js.get_last_msg(OBJECTS.name, test_subjects.object_subject(SECRET, ns, "web"))
        )
        assert (current.headers or {})[HDR_RESOURCE_VERSION] == web

        def older_removed() -> bool:
            try:
                left = objects.run(objects.js.get_last_msg(OBJECTS.name, older))
            except NotFoundError:
                return True
            return not left.data and "Nats-TTL" in (left.headers or {})

        wait_for(older_removed, what="the older layout's message replaced by one that expires")
    finally:
        watcher.stop()


def _publish_other_and_stop(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str, instance: str
) -> None:
    """A watcher has published Secret "other" and saved its progress past it, then stopped."""
    watcher = start_watcher(stack, instance, {})
    version = int(create_secret(cluster, ns, "other", "kubernetes.io/tls").metadata.resource_version)
    objects.wait_published(ns, (SECRET, "other"))
    wait_for(lambda: watcher_progress(stack).get(SCOPE, 0) >= version, what="the watch progress saved")
    watcher.stop()


async def _save_progress(objects: ObjectsStream, resource_version: str) -> None:
    kv = await objects.js.key_value(WATCHER_STATE_BUCKET)
    await kv.put(f"rv.{SCOPE}", resource_version.encode())


def test_objects_published_as_pem_by_an_older_watcher_are_published_again_as_facts(
    stack: Stack, cluster: Cluster, objects: ObjectsStream, ns: str
) -> None:
    instance = "watcher-format"
    _publish_other_and_stop(stack, cluster, objects, ns, instance)

    # What a watcher before facts left: "web" published as PEM, the progress saved past it under the
    # older format (started again without looking at the format, the watcher would list nothing).
    web = create_secret(cluster, ns, "web", "kubernetes.io/tls")
    rv = web.metadata.resource_version
    older = SecretObserved(
        namespace=ns,
        name="web",
        uid=web.metadata.uid,
        resource_version=rv,
        type="kubernetes.io/tls",
        sources=[CertSource("tls.crt", pem=[CERT.decode()])],
    )
    subject = test_subjects.object_subject(SECRET, ns, "web")
    headers = {HDR_DIGEST: "older", HDR_RESOURCE_VERSION: rv, HDR_SCOPE: SCOPE, HDR_MSG_ID: f"older/{rv}"}
    objects.run(objects.js.publish(subject, msgspec.json.encode(older), stream=OBJECTS.name, headers=headers))
    objects.run(_save_progress(objects, rv))
    objects.run(_save_older_watch_config(objects))

    watcher = start_watcher(stack, instance, {})
    try:

        def republished_as_facts() -> bool:
            last = object_decoder.decode(objects.run(objects.js.get_last_msg(OBJECTS.name, subject)).data)
            assert isinstance(last, SecretObserved)
            return bool(last.sources[0].certs) and not last.sources[0].pem

        wait_for(republished_as_facts, what="web published again, as facts")
    finally:
        watcher.stop()


async def _save_older_watch_config(objects: ObjectsStream) -> None:
    kv = await objects.js.key_value(WATCHER_STATE_BUCKET)
    config = msgspec.json.decode((await kv.get(f"rv.{WATCH_CONFIG_KEY}")).value or b"{}")
    del config["object_format"]
    await kv.put(f"rv.{WATCH_CONFIG_KEY}", msgspec.json.encode(config))
