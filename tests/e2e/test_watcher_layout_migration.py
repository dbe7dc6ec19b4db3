"""A watcher started on an objects stream written in the layout before partitions (no partition token
in the subject) removes those messages and publishes everything again in the current layout, even
when its saved watch progress says nothing changed since."""

from __future__ import annotations

from nats.js.errors import NotFoundError

from devcluster.stack import Stack
from schemas.streams import (
    HDR_DIGEST,
    HDR_MSG_ID,
    HDR_RESOURCE_VERSION,
    HDR_SCOPE,
    OBJECTS,
    WATCHER_STATE_BUCKET,
)
from schemas.subjects import KIND_SECRET as SECRET
from tests import subjects as test_subjects
from tests.conftest import Cluster, wait_for, watcher_progress
from tests.e2e.watchers import (  # noqa: F401 (fixtures)
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
    watcher = start_watcher(stack, instance, {})
    version = int(create_secret(cluster, ns, "other", "kubernetes.io/tls").metadata.resource_version)
    objects.wait_published(ns, (SECRET, "other"))
    wait_for(lambda: watcher_progress(stack).get(SCOPE, 0) >= version, what="the watch progress saved")
    watcher.stop()

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


async def _save_progress(objects: ObjectsStream, resource_version: str) -> None:
    kv = await objects.js.key_value(WATCHER_STATE_BUCKET)
    await kv.put(f"rv.{SCOPE}", resource_version.encode())
