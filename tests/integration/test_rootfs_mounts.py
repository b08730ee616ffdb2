"""Container root filesystems at the storage level, idmapped and with image volumes.

Idmapped: an overlay on idmapped clones of the image's layers shows the image's files as the id map's root, what
is written lands as the mapped ids, the layers on disk stay host root's, and no clone stays mounted after a mount,
a removal, a failure or a crash. Image volumes: another image's root filesystem mounted read-only beside the
container's root, keeping that image from removal until the container's root goes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage import idmap as idmapping
from storage.errors import ImageInUse, ImageNotFound, MountError
from storage.idmap import IdMap
from storage.images import ImageStore
from tests.imagebuild import Entry, build_busybox_image, write_oci_layout

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")]

MAP = IdMap(uid=200000, gid=300000, length=65536)


def mounts_below(path: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


@pytest.fixture
def store(tmp_path):
    store = ImageStore(tmp_path / "root")
    if store.idmap_problem():
        pytest.skip(store.idmap_problem())
    yield store
    for cid in store.rootfs_ids():
        store.remove_rootfs(cid)
    assert mounts_below(tmp_path) == []


def image(store: ImageStore, tmp_path: Path) -> str:
    img = build_busybox_image(extra_layers=[[Entry("etc/app.conf", data=b"v1"), Entry("data", "dir", mode=0o755),
                                             Entry("data/owned", data=b"x", uid=1000, gid=1000)]])
    store.import_archive(write_oci_layout(tmp_path / "layout", [(img, "example.test/idmap:1")]))
    return img.id


def data_images(store: ImageStore, tmp_path: Path) -> tuple[str, str]:
    """A one-layer image without busybox, and a two-layer one whose top layer replaces a file."""
    from tests.imagebuild import build_image, tar_layer
    one = build_image([tar_layer([Entry("models", "dir"), Entry("models/m.bin", data=b"weights")])])
    two = build_image([tar_layer([Entry("cfg", "dir"), Entry("cfg/a", data=b"old"), Entry("cfg/b", data=b"b")]),
                       tar_layer([Entry("cfg/a", data=b"new")])])
    store.import_archive(write_oci_layout(tmp_path / "data", [(one, "example.test/models:1"), (two, "example.test/cfg:2")]))
    return one.id, two.id


def test_an_idmapped_rootfs_shows_the_image_as_the_maps_root(store, tmp_path):
    image_id = image(store, tmp_path)
    rootfs = store.create_rootfs("c-idmap", image_id, MAP)
    assert rootfs.idmapped
    assert mounts_below(tmp_path) == [str(rootfs.path)]  # the layer clones went once the overlay held them
    for path in ("", "bin/busybox", "etc/app.conf"):
        st = os.stat(rootfs.path / path)
        assert (st.st_uid, st.st_gid) == (MAP.uid, MAP.gid), path
    st = os.stat(rootfs.path / "data/owned")
    assert (st.st_uid, st.st_gid) == (MAP.uid + 1000, MAP.gid + 1000)
    # a change copies the file up with its mapped owner; the layer itself is untouched, still host root's
    (rootfs.path / "etc/app.conf").write_bytes(b"v2")
    up = os.stat(rootfs.upper / "etc/app.conf")
    assert (up.st_uid, up.st_gid) == (MAP.uid, MAP.gid)
    layer_file = next(p for p in (store.root / "layers").glob("*/diff/etc/app.conf"))
    assert layer_file.read_bytes() == b"v1" and layer_file.stat().st_uid == 0
    plain = store.create_rootfs("c-plain", image_id)
    assert not plain.idmapped and os.stat(plain.path / "etc/app.conf").st_uid == 0

    # after an unmount behind our back (a reboot), the rootfs comes back idmapped, with what was written
    os.system(f"umount {rootfs.path}")
    again = store.ensure_rootfs_mounted("c-idmap")
    assert again.idmapped and (again.path / "etc/app.conf").read_bytes() == b"v2"
    assert os.stat(again.path / "bin/busybox").st_uid == MAP.uid
    store.remove_rootfs("c-idmap")
    store.remove_rootfs("c-plain")
    assert mounts_below(tmp_path) == [] and layer_file.read_bytes() == b"v1"


def test_clones_a_crash_left_attached_are_unmounted_at_start_never_deleted_through(store, tmp_path):
    image_id = image(store, tmp_path)
    layer_dir = next((store.root / "layers").glob("*/diff/etc/app.conf")).parents[1]  # the layer that has it
    kept = store.create_rootfs("c-kept", image_id, MAP)
    # what a crash between attaching a clone and mounting the overlay leaves: one with a record, one without
    for cid in ("c-kept", "c-norecord"):
        attached = store.root / "containers" / cid / "lower" / "0"
        attached.mkdir(parents=True)
        with idmapping.user_namespace(MAP) as userns:
            idmapping.attach_idmapped(layer_dir, attached, userns)
    assert len(mounts_below(tmp_path)) == 3
    reopened = ImageStore(store.root)
    assert mounts_below(tmp_path) == [str(kept.path)]
    assert reopened.rootfs_ids() == ["c-kept"]
    assert not (store.root / "containers/c-norecord").exists()
    assert (layer_dir / "etc/app.conf").read_bytes() == b"v1"


def test_a_failed_idmapped_mount_leaves_nothing(store, tmp_path):
    image_id = image(store, tmp_path)
    record = store.get(image_id)
    (store.layers.links / store.layers.get(record.chain_ids[-1]).link).unlink()  # the top layer's link is gone
    with pytest.raises(MountError):
        store.create_rootfs("c-broken", image_id, MAP)
    assert store.rootfs_ids() == [] and not (store.root / "containers/c-broken").exists()
    assert mounts_below(tmp_path) == []


def test_image_volumes_are_read_only_views_that_keep_their_images(store, tmp_path):
    image_id = image(store, tmp_path)
    models, cfg = data_images(store, tmp_path)
    rootfs = store.create_rootfs("c-vol", image_id, volume_images=["example.test/models:1", cfg])
    assert len(rootfs.volumes) == 2
    assert mounts_below(tmp_path) == [str(rootfs.path), *map(str, rootfs.volumes)]
    assert (rootfs.volumes[0] / "models/m.bin").read_bytes() == b"weights"
    assert (rootfs.volumes[1] / "cfg/a").read_bytes() == b"new"
    assert (rootfs.volumes[1] / "cfg/b").read_bytes() == b"b"
    with pytest.raises(OSError) as err:
        (rootfs.volumes[0] / "models/new").write_bytes(b"x")
    assert err.value.errno == 30  # EROFS
    with pytest.raises(ImageInUse, match=r"mounted as an image volume by container c-vol"):
        store.remove(models)
    store.gc()
    assert (rootfs.volumes[1] / "cfg/a").read_bytes() == b"new"
    # remounted after an unmount behind our back, then gone with the container's root
    os.system(f"umount {rootfs.volumes[0]}")
    assert (store.ensure_rootfs_mounted("c-vol").volumes[0] / "models/m.bin").exists()
    store.remove_rootfs("c-vol")
    assert mounts_below(tmp_path) == []
    assert store.remove(models) and store.remove(cfg)


def test_idmapped_image_volumes_and_a_missing_volume_image(store, tmp_path):
    image_id = image(store, tmp_path)
    models, _ = data_images(store, tmp_path)
    rootfs = store.create_rootfs("c-idvol", image_id, MAP, volume_images=[models])
    st = os.stat(rootfs.volumes[0] / "models/m.bin")
    assert (st.st_uid, st.st_gid) == (MAP.uid, MAP.gid)
    with pytest.raises(ImageNotFound, match=r"example.test/absent:1 of an image volume is not in the store"):
        store.create_rootfs("c-absent", image_id, volume_images=["example.test/absent:1"])
    assert store.rootfs_ids() == ["c-idvol"]
    assert mounts_below(tmp_path) == [str(rootfs.path), str(rootfs.volumes[0])]


def test_a_crash_before_the_record_leaves_volumes_unmounted_at_start(store, tmp_path):
    image_id = image(store, tmp_path)
    models, _ = data_images(store, tmp_path)
    rootfs = store.create_rootfs("c-lost", image_id, volume_images=[models])
    (store.root / "containers/c-lost/rootfs.json").unlink()  # as if the crash came before the record was written
    reopened = ImageStore(store.root)
    assert reopened.rootfs_ids() == [] and mounts_below(tmp_path) == []
    assert not rootfs.path.parent.exists() and reopened.remove(models)
