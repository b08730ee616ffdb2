"""Pulling into the storage store from real registries (docker-registry) and from a small loopback
server that misbehaves on purpose: platforms, auth, whiteouts through overlayfs, failures that
must leave nothing behind, coalescing, retries, timeouts, many-layer mounts, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from storage.auth import Credentials
from storage.errors import (AuthError, BlockedRegistry, DigestMismatch, HostileLayer, ImageInUse, ImageNotFound,
                            NoSpace, PullTimeout, RegistryError, UnsupportedManifest)
from storage.images import ImageStore
from storage.registries_conf import Mirror, RegistriesConfig, RegistryEntry
from storage.manifest import host_platform
from tests.imagebuild import Entry, build_busybox_image, build_image, build_index, tar_layer
from tests.integration.fake_registry import EMPTY, FakeRegistry, leftovers

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="unpacking and mounting need root")]


def insecure(*hosts: str) -> RegistriesConfig:
    return RegistriesConfig(tuple(RegistryEntry(h, h, insecure=True) for h in hosts))


@pytest.fixture
def store_factory(tmp_path):
    """Image stores on temp roots; every rootfs they mounted is unmounted after the test."""
    made: list[ImageStore] = []

    def make(registries: RegistriesConfig, **kwargs) -> ImageStore:
        store = ImageStore(tmp_path / "root", registries, **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        for container_id in store.rootfs_ids():
            store.remove_rootfs(container_id)


@pytest.fixture
def fake():
    server = FakeRegistry()
    yield server
    server.close()


def test_index_pull_picks_this_machines_platform_and_reports_the_index_digest(registry, store_factory):
    arch, variant = host_platform()
    mine = build_busybox_image(extra_layers=[[Entry("arch", data=arch.encode())]], architecture=arch)
    other = build_busybox_image(extra_layers=[[Entry("arch", data=b"s390x")]], architecture="s390x")
    arm = build_busybox_image(extra_layers=[[Entry("arch", data=b"arm")]], architecture="arm", variant="v7")
    index = build_index([(other, {"os": "linux", "architecture": "s390x"}),
                         (arm, {"os": "linux", "architecture": "arm", "variant": "v7"}),
                         (mine, {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})})])
    registry.push("multi/busybox", "1", index)
    registry.push("multi/foreign", "1", build_index([(other, {"os": "linux", "architecture": "s390x"})]))
    store = store_factory(insecure(registry.host))
    record = store.pull(f"{registry.host}/multi/busybox:1")
    assert record.id == mine.id
    assert record.repo_digests == [f"{registry.host}/multi/busybox@{index.digest}"]
    rootfs = store.create_rootfs("c-arch", record.id)
    assert (rootfs.path / "arch").read_bytes() == arch.encode()
    with pytest.raises(UnsupportedManifest, match="linux/s390x"):
        store.pull(f"{registry.host}/multi/foreign:1")


def test_whiteouts_and_opaque_dirs_through_the_overlay_and_rootfs_lifecycle(registry, store_factory):
    image = build_busybox_image(extra_layers=[
        [Entry("etc/motd", data=b"hello"), Entry("data", "dir"), Entry("data/old", data=b"old")],
        [Entry("etc/.wh.motd"), Entry("data/.wh..wh..opq"), Entry("data/new", data=b"new")],
    ])
    registry.push("wh/busybox", "1", image)
    store = store_factory(insecure(registry.host))
    record = store.pull(f"{registry.host}/wh/busybox:1")
    rootfs = store.create_rootfs("c-wh", record.id)
    assert os.path.ismount(rootfs.path)
    assert not (rootfs.path / "etc/motd").exists()
    assert sorted(os.listdir(rootfs.path / "data")) == ["new"]
    assert os.access(rootfs.path / "bin/busybox", os.X_OK)
    (rootfs.path / "written").write_text("by the container")
    assert store.writable_layer_usage("c-wh")[1] >= 1
    # an unmount behind our back (a reboot) is repaired, and what the container wrote is still there
    subprocess.run(["umount", str(rootfs.path)], check=True)
    again = store.ensure_rootfs_mounted("c-wh")
    assert (again.path / "written").read_text() == "by the container"
    store.create_rootfs("c-wh", record.id)  # idempotent
    # the image cannot go while a container uses it; its layers outlive the record while mounted
    with pytest.raises(ImageInUse):
        store.remove(record.id, in_use=lambda image_id: image_id == record.id)
    assert store.remove(f"{registry.host}/wh/busybox:1")
    assert store.list() == []
    assert (again.path / "bin/busybox").exists()
    store.remove_rootfs("c-wh")
    assert not (store.root / "containers/c-wh").exists()
    assert sorted(os.listdir(store.root / "layers")) == []  # the removed image's layers went with the last user
    store.remove_rootfs("c-wh")  # idempotent
    store.gc()
    assert leftovers(store.root) == EMPTY


def test_token_auth_with_password_identity_token_and_the_token_cache(token_registry, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("token", data=b"1")]])
    token_registry.push("tok/app", "1", image)
    token_registry.push("tok/app", "2", image)
    store = store_factory(insecure(token_registry.host))
    user, password = token_registry.credentials
    with pytest.raises(AuthError, match=token_registry.host):
        store.pull(f"{token_registry.host}/tok/app:1")
    with pytest.raises(AuthError, match="refused"):
        store.pull(f"{token_registry.host}/tok/app:1", Credentials(user, "wrong"))
    before = len(token_registry.token_server.requests)
    assert store.pull(f"{token_registry.host}/tok/app:1", Credentials(user, password)).id == image.id
    store.pull(f"{token_registry.host}/tok/app:2", Credentials(user, password))
    issued = token_registry.token_server.requests[before:]
    assert len(issued) == 1, issued  # one token per repository scope, reused
    assert issued[0]["scope"] == "repository:tok/app:pull" and issued[0]["service"]
    store.remove(image.id)
    with pytest.raises(AuthError):  # the cached token belongs to the right password only
        store.pull(f"{token_registry.host}/tok/app:1", Credentials(user, "wrong"))
    assert store.pull(f"{token_registry.host}/tok/app:1", Credentials(identity_token=f"refresh-{password}")).id == image.id
    assert token_registry.token_server.requests[-1]["method"] == "POST"


def test_basic_auth_from_an_auth_file(private_registry, store_factory, tmp_path):
    import base64
    image = build_busybox_image(extra_layers=[[Entry("basic", data=b"1")]])
    private_registry.push("basic/app", "1", image)
    auth_file = tmp_path / "auth.json"
    user, password = private_registry.credentials
    auth_file.write_text(json.dumps({"auths": {private_registry.host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}}}))
    store = store_factory(insecure(private_registry.host), auth_file=auth_file)
    assert store.pull(f"{private_registry.host}/basic/app:1").id == image.id


def test_wrong_bytes_fail_the_pull_and_leave_nothing(fake, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("x", data=b"x")]])
    layer = json.loads(image.manifest)["layers"][1]["digest"]
    fake.serve("bad/blob", "1", image, blobs_override={layer: image.blobs[layer][:-1] + b"!"})
    store = store_factory(insecure(fake.host))
    with pytest.raises(DigestMismatch, match=layer):
        store.pull(f"{fake.host}/bad/blob:1")
    assert leftovers(store.root) == EMPTY
    # a config that lies about the layers' uncompressed digest is caught after unpacking
    lying = build_image([tar_layer([Entry("a", data=b"a")])], diff_ids=["sha256:" + "0" * 64])
    fake.serve("bad/diffid", "1", lying)
    with pytest.raises(DigestMismatch, match="uncompressed digest"):
        store.pull(f"{fake.host}/bad/diffid:1")
    assert leftovers(store.root) == EMPTY


def test_hostile_layer_from_a_registry_is_refused_and_leaves_nothing(registry, store_factory, tmp_path):
    image = build_busybox_image(extra_layers=[[Entry("esc", "symlink", linkname=str(tmp_path)),
                                                Entry("esc/planted", data=b"pwned")]])
    registry.push("evil/app", "1", image)
    store = store_factory(insecure(registry.host))
    with pytest.raises(HostileLayer, match="symlink"):
        store.pull(f"{registry.host}/evil/app:1")
    assert not (tmp_path / "planted").exists()
    assert leftovers(store.root) == EMPTY


def test_transient_errors_are_retried_and_concurrent_pulls_coalesce(fake, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("r", data=b"r")]])
    fake.serve("flaky/app", "1", image)
    fake.fail_first["/v2/flaky/app/manifests/1"] = 2
    fake.delay = 0.2  # long enough that the second puller arrives while the first is running
    store = store_factory(insecure(fake.host))
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.pull(f"{fake.host}/flaky/app:1"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.id for r in results] == [image.id] * 3
    assert fake.hits["/v2/flaky/app/manifests/1"] == 3  # two 500s, then one answer for all three pullers
    assert all(count == 1 for path, count in fake.hits.items() if "/blobs/" in path)


def test_a_stalled_download_times_out_and_leaves_nothing(fake, store_factory):
    image = build_busybox_image()
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    fake.serve("slow/app", "1", image)
    fake.stall_after[f"/v2/slow/app/blobs/{layer}"] = 1000
    store = store_factory(insecure(fake.host), progress_timeout=0.5)
    with pytest.raises(PullTimeout, match="no data"):
        store.pull(f"{fake.host}/slow/app:1")
    assert leftovers(store.root) == EMPTY


def test_a_killed_pull_leaves_nothing_after_the_next_start(fake, tmp_path):
    image = build_busybox_image()
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    fake.serve("slow/app", "1", image)
    fake.stall_after[f"/v2/slow/app/blobs/{layer}"] = 1000
    root = tmp_path / "root"
    script = ("import sys; from storage.images import ImageStore; from storage.registries_conf import RegistriesConfig, "
              "RegistryEntry; h=sys.argv[2]; ImageStore(sys.argv[1], RegistriesConfig((RegistryEntry(h, h, insecure=True),)))"
              ".pull(h + '/slow/app:1')")
    proc = subprocess.Popen([sys.executable, "-c", script, str(root), fake.host], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        while not (root / "ingest").exists() or not os.listdir(root / "ingest"):
            assert proc.poll() is None, "the pull never started downloading"
            assert time.monotonic() < deadline, "the pull never started downloading"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert os.listdir(root / "ingest")  # the killed pull left a partial download ...
    store = ImageStore(root, insecure(fake.host))
    assert store.list() == [] and leftovers(root) == EMPTY  # ... which the next start removes


def test_mirror_failure_falls_back_and_the_requested_name_is_reported(fake, registry, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("m", data=b"m")]])
    registry.push("mirrored/app", "1", image)
    conf = RegistriesConfig((RegistryEntry("upstream.test", registry.host, insecure=True,
                                           mirrors=(Mirror(fake.host, insecure=True),)),))
    store = store_factory(conf)
    record = store.pull("upstream.test/mirrored/app:1")
    assert fake.hits.get("/v2/mirrored/app/manifests/1") == 1  # the mirror was asked first
    assert record.repo_tags == ["upstream.test/mirrored/app:1"]
    assert record.repo_digests == [f"upstream.test/mirrored/app@{image.digest}"]
    with pytest.raises(ImageNotFound, match="mirrored/none"):
        store.pull("upstream.test/mirrored/none:1")


def test_blocked_and_schema1_are_refused_clearly(fake, store_factory):
    schema1 = json.dumps({"schemaVersion": 1, "name": "old/app", "tag": "1", "fsLayers": []}).encode()
    fake.routes["/v2/old/app/manifests/1"] = (schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws")
    conf = RegistriesConfig((RegistryEntry(fake.host, fake.host, insecure=True),
                             RegistryEntry("blocked.test", "blocked.test", blocked=True)))
    store = store_factory(conf)
    with pytest.raises(UnsupportedManifest, match="schema1"):
        store.pull(f"{fake.host}/old/app:1")
    with pytest.raises(BlockedRegistry, match="blocked.test"):
        store.pull("blocked.test/app:1")


def test_many_layers_mount_and_tags_move_and_survive_a_restart(registry, store_factory, tmp_path):
    layers = [tar_layer([Entry(f"layer{i}", data=str(i).encode())]) for i in range(400)]
    big = build_image(layers)
    registry.push("many/layers", "1", big)
    small = build_busybox_image(compression="zstd")
    registry.push("many/layers", "2", small)
    store = store_factory(insecure(registry.host))
    record = store.pull(f"{registry.host}/many/layers:1")
    rootfs = store.create_rootfs("c-many", record.id)
    assert (rootfs.path / "layer0").read_text() == "0"
    assert (rootfs.path / "layer399").read_text() == "399"
    store.remove_rootfs("c-many")
    # the tag moves to the image pulled last; the old image keeps its digest but loses the tag
    registry.push("many/layers", "1", small)
    moved = store.pull(f"{registry.host}/many/layers:1")
    assert moved.id == small.id
    reopened = ImageStore(store.root, insecure(registry.host))
    assert reopened.get(f"{registry.host}/many/layers:1").id == small.id
    assert reopened.get(record.id).repo_tags == []
    assert reopened.get(f"{registry.host}/many/layers@{big.digest}").id == big.id


def test_a_dropped_connection_is_retried_and_a_dead_one_fails_leaving_nothing(fake, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("d", data=os.urandom(100_000))]])
    layer = f"/v2/drop/app/blobs/{json.loads(image.manifest)['layers'][1]['digest']}"
    fake.serve("drop/app", "1", image)
    store = store_factory(insecure(fake.host))
    fake.drops[layer] = 1
    assert store.pull(f"{fake.host}/drop/app:1").id == image.id
    assert fake.hits[layer] == 2
    store.remove(image.id)
    fake.drops[layer] = 100
    with pytest.raises(RegistryError, match="drop/app"):
        store.pull(f"{fake.host}/drop/app:1")
    assert leftovers(store.root) == EMPTY


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_fails_the_pull_clearly_and_leaves_nothing(registry, small_disk):
    image = build_busybox_image(extra_layers=[[Entry("big", data=os.urandom(6 << 20))]])
    registry.push("full/app", "1", image)
    store = ImageStore(small_disk / "root", insecure(registry.host))
    with pytest.raises(NoSpace, match="full/app"):
        store.pull(f"{registry.host}/full/app:1")
    assert leftovers(store.root) == EMPTY


def test_insecure_means_tls_without_verification_and_secure_checks_certificates(tls_registry, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("tls", data=b"1")]])
    tls_registry.push("tls/app", "1", image)
    store = store_factory(RegistriesConfig((RegistryEntry("secure.test", tls_registry.host),
                                            RegistryEntry("insecure.test", tls_registry.host, insecure=True))))
    with pytest.raises(RegistryError, match="certificate"):
        store.pull("secure.test/tls/app:1")
    assert store.pull("insecure.test/tls/app:1").id == image.id


def test_lookups_by_name_digest_id_and_prefix(registry, store_factory):
    image = build_busybox_image(extra_layers=[[Entry("lookup", data=b"1")]])
    digest = registry.push("look/up", "1", image)
    store = store_factory(insecure(registry.host))
    store.pull(f"{registry.host}/look/up:1")
    hex_id = image.id[7:]
    for name in (f"{registry.host}/look/up:1", f"{registry.host}/look/up@{digest}", image.id, hex_id,
                 hex_id[:12], f"sha256:{hex_id[:4]}"):
        assert store.get(name).id == image.id, name
    for name in (hex_id[:11], f"{registry.host}/look/up:2", f"{registry.host}/look/up@sha256:{'0' * 64}", "busybox"):
        assert store.get(name) is None, name
    assert [r.id for r in store.list(f"{registry.host}/look/up:1")] == [image.id]
    assert store.list("nothing.test/x:1") == []


def test_a_pull_flushes_its_new_files_once_before_the_record_makes_the_image_exist(registry, store_factory,
                                                                                     monkeypatch):
    """Durability without an fsync per blob: one syncfs covers blobs, manifests and layers, and comes before the
    record's own durable write; a pull that adds nothing flushes nothing."""
    import storage.image_pull as pull_module
    from hostos import atomicfile

    image = build_busybox_image(extra_layers=[[Entry("flushed", data=b"once")]])
    registry.push("durable/busybox", "1", image)
    store = store_factory(insecure(registry.host))
    calls: list[str] = []
    real_syncfs, real_fsync, real_write = pull_module.syncfs, os.fsync, atomicfile.atomic_write_bytes
    monkeypatch.setattr(pull_module, "syncfs", lambda path: (calls.append("syncfs"), real_syncfs(path))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])

    def write(path, data, **kw):
        if Path(path).parent.name == "images":  # the image records (not the layers' own metadata)
            calls.append("record")
        return real_write(path, data, **kw)

    monkeypatch.setattr(atomicfile, "atomic_write_bytes", write)
    store.pull(f"{registry.host}/durable/busybox:1")
    assert calls == ["syncfs", "record", "fsync", "fsync"]  # then the record's file and its directory
    calls.clear()
    store.pull(f"{registry.host}/durable/busybox:1")  # nothing new: the record is rewritten, nothing flushed first
    assert "syncfs" not in calls
