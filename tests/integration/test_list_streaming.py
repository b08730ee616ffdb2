"""The Stream* RPCs (CRIListStreaming): the same items as their List* twins, each exactly once, in messages of
at least one item that stay under the size limit, with the List* filters."""

from __future__ import annotations

import pytest
from cri.api.v1 import api_pb2

from cri.server.batches import MAX_BATCH_BYTES
from tests.integration.helpers_containers import container_config, create, pod_config, run

# Four of these make more than one batch, while one List* answer still fits gRPC's 4 MiB default.
BIG = "x" * (MAX_BATCH_BYTES // 3)


def _ids(responses, field: str, key=lambda item: item.id) -> list[str]:
    responses = list(responses)
    assert all(len(getattr(r, field)) >= 1 for r in responses), "a streamed message without items"
    return [key(item) for r in responses for item in getattr(r, field)]


def _oversized(responses, field: str) -> list[tuple[int, int]]:
    """(items, bytes) of every message of several items over the limit (a message of one item may exceed it)."""
    return [(len(getattr(r, field)), r.ByteSize()) for r in responses
            if len(getattr(r, field)) > 1 and r.ByteSize() > MAX_BATCH_BYTES + 1024]


@pytest.fixture
def many(env, tmp_path):  # noqa: F811
    """Three more pods with large annotations, and two containers with twice as large ones (one running)."""
    d, pod, cfg = env
    pods = []
    try:
        for i in range(3):
            c = pod_config(tmp_path / "logs", name=f"stream-{i}")
            c.annotations["big"] = BIG
            c.labels["group"] = "streamed"
            pods.append(d.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=c), timeout=60).pod_sandbox_id)
        running = run(d, pod, cfg, container_config("runs", ["sleep", "3600"], annotations={"big": BIG, "big2": BIG}))
        created = create(d, pod, cfg, container_config("waits", ["true"], annotations={"big": BIG, "big2": BIG},
                                                       labels={"group": "streamed"}))
        yield d, pod, pods, running, created
    finally:
        for p in pods:
            d.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=p), timeout=60)
            d.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p), timeout=60)


def test_stream_pod_sandboxes_matches_list(many):
    d, pod, pods, _, _ = many
    listed = [p.id for p in d.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=30).items]
    streamed = list(d.runtime.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest(), timeout=30))
    ids = _ids(streamed, "pod_sandboxes")
    assert sorted(ids) == sorted(listed) == sorted([pod, *pods])
    assert len(streamed) >= 2
    assert _oversized(streamed, "pod_sandboxes") == []

    only = api_pb2.PodSandboxFilter(label_selector={"group": "streamed"})
    assert sorted(_ids(d.runtime.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest(filter=only), timeout=30),
                       "pod_sandboxes")) == sorted(pods)
    # Nothing matches: the stream ends without a message, not with an error.
    none = api_pb2.PodSandboxFilter(id="f" * 64)
    assert list(d.runtime.StreamPodSandboxes(api_pb2.StreamPodSandboxesRequest(filter=none), timeout=30)) == []


def test_stream_containers_and_their_stats_match_list(many):
    d, pod, _, running, created = many
    streamed = list(d.runtime.StreamContainers(api_pb2.StreamContainersRequest(), timeout=30))
    assert sorted(_ids(streamed, "containers")) == sorted([running, created])
    assert len(streamed) == 2, "two containers of two thirds of the limit each cannot share a message"
    state = api_pb2.ContainerFilter(state=api_pb2.ContainerStateValue(state=api_pb2.CONTAINER_RUNNING))
    assert _ids(d.runtime.StreamContainers(api_pb2.StreamContainersRequest(filter=state), timeout=30),
                "containers") == [running]

    listed = d.runtime.ListContainerStats(api_pb2.ListContainerStatsRequest(), timeout=30).stats
    stats = list(d.runtime.StreamContainerStats(api_pb2.StreamContainerStatsRequest(), timeout=30))
    key = lambda s: s.attributes.id  # noqa: E731
    assert sorted(_ids(stats, "container_stats", key)) == sorted(s.attributes.id for s in listed)
    by_id = {s.attributes.id: s for r in stats for s in r.container_stats}
    assert by_id[running].memory.working_set_bytes.value > 0
    only = api_pb2.ContainerStatsFilter(id=running[:12])
    assert _ids(d.runtime.StreamContainerStats(api_pb2.StreamContainerStatsRequest(filter=only), timeout=30),
                "container_stats", key) == [running]


def test_stream_pod_sandbox_stats_matches_list(many):
    d, pod, pods, running, created = many
    key = lambda s: s.attributes.id  # noqa: E731
    stats = list(d.runtime.StreamPodSandboxStats(api_pb2.StreamPodSandboxStatsRequest(), timeout=60))
    assert sorted(_ids(stats, "pod_sandbox_stats", key)) == sorted([pod, *pods])
    assert len(stats) >= 2
    assert _oversized(stats, "pod_sandbox_stats") == []
    mine = next(s for r in stats for s in r.pod_sandbox_stats if s.attributes.id == pod)
    assert sorted(c.attributes.id for c in mine.linux.containers) == sorted([running, created])
    only = api_pb2.PodSandboxStatsFilter(id=pod)
    assert _ids(d.runtime.StreamPodSandboxStats(api_pb2.StreamPodSandboxStatsRequest(filter=only), timeout=30),
                "pod_sandbox_stats", key) == [pod]


def test_stream_images_matches_list(env):  # noqa: F811
    d, _, _ = env
    listed = d.images.ListImages(api_pb2.ListImagesRequest(), timeout=30).images
    streamed = list(d.images.StreamImages(api_pb2.StreamImagesRequest(), timeout=30))
    assert listed
    assert sorted(_ids(streamed, "images")) == sorted(i.id for i in listed)
    wanted = api_pb2.ImageFilter(image=api_pb2.ImageSpec(image=listed[0].repo_tags[0]))
    assert _ids(d.images.StreamImages(api_pb2.StreamImagesRequest(filter=wanted), timeout=30),
                "images") == [listed[0].id]
    nothing = api_pb2.ImageFilter(image=api_pb2.ImageSpec(image="example.test/none:1"))
    assert list(d.images.StreamImages(api_pb2.StreamImagesRequest(filter=nothing), timeout=30)) == []

