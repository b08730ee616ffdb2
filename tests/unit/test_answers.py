"""The serialized answers of the small reads (cri/server/answers.py) follow every change of what they report."""

import asyncio
from types import SimpleNamespace

from cri.api.v1 import api_pb2
from cri.server.answers import ReadAnswers
from cri.state.container_record import ContainerRecord
from cri.state.container_state import ContainerState
from cri.state.sandbox_record import SandboxRecord
from storage.image_records import ImageRecord


class FakeImages:
    """Just what the answers use of cri.core.images.ImageService."""

    def __init__(self, records):
        self.records = records
        self.generation = 0
        self.rendered = 0

    def pinned(self, record):
        return record.pinned

    def answer(self, ref, render):
        self.rendered += 1
        chosen = self.records if ref is None else [r for r in self.records if ref in (r.id, *r.repo_tags)][:1]
        return [render(r) for r in chosen]


def runtime(containers=(), sandboxes=(), images=()):
    by_id = {r.id: r for r in [*containers, *sandboxes]}
    index = SimpleNamespace(find=by_id.get)
    return SimpleNamespace(containers=index, sandboxes=index, images=FakeImages(list(images)))


def container(**fields):
    return ContainerRecord(id="c" * 64, sandbox_id="s" * 64, name="web", reserved_name="web_0", state=ContainerState.CREATED,
                           image="busybox", labels={"app": "web"}, **fields)


def test_container_status_follows_each_change_of_the_record():
    record = container()
    answers = ReadAnswers(runtime([record]))
    first = api_pb2.ContainerStatusResponse.FromString(answers.container_status.get(record))
    assert first.status.state == api_pb2.CONTAINER_CREATED and first.status.labels == {"app": "web"}
    assert answers.container_status.get(record) is answers.container_status.get(record)  # kept, not rebuilt

    record.move(ContainerState.RUNNING)
    record.started_at = 42
    second = api_pb2.ContainerStatusResponse.FromString(answers.container_status.get(record))
    assert second.status.state == api_pb2.CONTAINER_RUNNING and second.status.started_at == 42

    record.move(ContainerState.EXITED)
    record.exit_code, record.reason = 3, "Error"
    third = api_pb2.ContainerStatusResponse.FromString(answers.container_status.get(record))
    assert (third.status.state, third.status.exit_code, third.status.reason) == (api_pb2.CONTAINER_EXITED, 3, "Error")


def test_a_new_record_object_with_the_same_id_is_rendered_anew():
    old = container(message="old")
    answers = ReadAnswers(runtime([old]))
    answers.container_status.get(old)
    new = container(message="new")
    assert api_pb2.ContainerStatusResponse.FromString(answers.container_status.get(new)).status.message == "new"


def test_list_entries_concatenate_into_a_valid_list_answer():
    a, b = container(), ContainerRecord(id="d" * 64, sandbox_id="s" * 64, name="db", reserved_name="db_0",
                                        state=ContainerState.RUNNING, image="busybox")
    answers = ReadAnswers(runtime([a, b]))
    listed = api_pb2.ListContainersResponse.FromString(b"".join(answers.container_item.get(r) for r in (a, b)))
    assert [(c.id, c.state) for c in listed.containers] == [(a.id, api_pb2.CONTAINER_CREATED),
                                                            (b.id, api_pb2.CONTAINER_RUNNING)]


def test_sandbox_status_carries_the_time_of_each_call_and_follows_the_state():
    record = SandboxRecord(id="s" * 64, name="pod", namespace="ns", uid="u", state="ready", ips=["10.0.0.2"])
    answers = ReadAnswers(runtime(sandboxes=[record]))
    first = api_pb2.PodSandboxStatusResponse.FromString(answers.sandbox_status_now(record))
    second = api_pb2.PodSandboxStatusResponse.FromString(answers.sandbox_status_now(record))
    assert first.status.state == api_pb2.SANDBOX_READY and first.status.network.ip == "10.0.0.2"
    assert 0 < first.timestamp <= second.timestamp
    record.state = "notready"
    assert api_pb2.PodSandboxStatusResponse.FromString(
        answers.sandbox_status_now(record)).status.state == api_pb2.SANDBOX_NOTREADY


def test_image_answers_are_kept_until_the_store_changes():
    image = ImageRecord(id="sha256:" + "a" * 64, repo_tags=["busybox:1"], size=10, user="1000")
    rt = runtime(images=[image])
    answers = ReadAnswers(rt)
    status = api_pb2.ImageStatusResponse.FromString(answers.image_status("busybox:1"))
    assert status.image.id == image.id and status.image.uid.value == 1000
    answers.image_status("busybox:1")
    assert rt.images.rendered == 1
    assert not api_pb2.ImageStatusResponse.FromString(answers.image_status("nginx:1")).HasField("image")

    image.repo_tags.append("busybox:2")  # the store changes records in place and counts the change
    rt.images.generation += 1
    assert api_pb2.ImageStatusResponse.FromString(answers.image_status("busybox:1")).image.repo_tags == \
        ["busybox:1", "busybox:2"]
    assert [i.repo_tags for i in api_pb2.ListImagesResponse.FromString(answers.image_list()).images] == \
        [["busybox:1", "busybox:2"]]
    rt.images.records.clear()
    rt.images.generation += 1
    assert api_pb2.ListImagesResponse.FromString(answers.image_list()).images == []


def test_status_is_kept_for_a_second_and_follows_a_reload_and_the_network(monkeypatch):
    from cri.server import runtime_status

    looked = []

    async def features(rt, name):  # what costs the host look-ups (binaries, probes) in the real one
        looked.append(name)
        return api_pb2.RuntimeHandlerFeatures(recursive_read_only_mounts=True)

    monkeypatch.setattr(runtime_status, "_handler_features", features)
    clock = [100.0]
    monkeypatch.setattr(runtime_status.time, "monotonic", lambda: clock[0])
    network = [(True, "", "")]
    config = SimpleNamespace(runtime=SimpleNamespace(default_runtime="runc", handlers={"runc": None}))
    rt = SimpleNamespace(config=config, answers=ReadAnswers(runtime()), runtime_condition=lambda: (True, "", ""),
                         network_condition=lambda: network[0])

    def status(verbose=False):
        body = asyncio.run(runtime_status.status(rt, api_pb2.StatusRequest(verbose=verbose), None))
        return api_pb2.StatusResponse.FromString(body if isinstance(body, bytes) else body.SerializeToString())

    first = status()
    assert [h.name for h in first.runtime_handlers] == ["", "runc"] and looked == ["runc", "runc"]
    assert {c.type: c.status for c in first.status.conditions} == {"RuntimeReady": True, "NetworkReady": True}
    assert status() == first and len(looked) == 2  # answered from memory
    network[0] = (False, "NetworkPluginNotReady", "no config")
    assert {c.type: c.status for c in status().status.conditions}["NetworkReady"] is False  # at once
    clock[0] += 0.5
    status()
    assert len(looked) == 4  # (rebuilt once, for the network's change)
    clock[0] += 1.1
    status()
    assert len(looked) == 6  # a second later the host is looked at again
    config.runtime = SimpleNamespace(default_runtime="runc", handlers={"runc": None, "crun": None})  # SIGHUP
    assert [h.name for h in status().runtime_handlers] == ["", "runc", "crun"]
