"""User resolution against the image's passwd/group, and rootfs paths that never escape the rootfs."""

from __future__ import annotations

import os

import pytest

from cri.oci.rootfs import RootfsPathError, ensure_rootfs_dir, read_rootfs_file, secure_join
from cri.oci.users import UserRequest, UserResolutionError, resolve_user

PASSWD = "root:x:0:0:root:/root:/bin/sh\nu1:x:1000:1000::/home/u1:/bin/sh\nweird line\n"
GROUP = "root:x:0:\nu1:x:1000:\nextra:x:50000:u1,other\nstaff:x:50:\n"


@pytest.mark.parametrize("request_,expected", [
    (UserRequest(), (0, 0, (0,), "/root")),  # the primary gid is always a supplementary group too
    (UserRequest(run_as_user=1000), (1000, 1000, (1000, 50000), "/home/u1")),
    (UserRequest(run_as_user=1000, supplemental_groups=(1234, 1000)), (1000, 1000, (1000, 50000, 1234), "/home/u1")),
    (UserRequest(run_as_user=1000, strict_supplemental_groups=True), (1000, 1000, (1000,), "/home/u1")),
    (UserRequest(run_as_user=4242), (4242, 0, (0,), "/")),
    (UserRequest(run_as_username="u1", run_as_group=7), (1000, 7, (7, 50000), "/home/u1")),
    (UserRequest(image_user="u1"), (1000, 1000, (1000, 50000), "/home/u1")),
    (UserRequest(image_user="u1:staff"), (1000, 50, (50, 50000), "/home/u1")),
    (UserRequest(image_user="1000:60"), (1000, 60, (60, 50000), "/home/u1")),
    (UserRequest(image_user="u1:staff", run_as_user=0), (0, 0, (0,), "/root")),  # run_as_user overrides both
])
def test_resolution(request_, expected):
    user = resolve_user(request_, PASSWD, GROUP)
    assert (user.uid, user.gid, user.additional_gids, user.home) == expected


@pytest.mark.parametrize("request_", [UserRequest(run_as_username="ghost"), UserRequest(image_user="ghost"),
                                      UserRequest(image_user="u1:ghosts"), UserRequest(image_user="99999999999")])
def test_unknown_names_fail(request_):
    with pytest.raises(UserResolutionError):
        resolve_user(request_, PASSWD, GROUP)


def test_images_without_passwd_still_resolve_numeric_ids():
    assert resolve_user(UserRequest(image_user="5:6"), None, None).uid == 5


def test_secure_join_keeps_symlinks_inside_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/shadow")  # absolute: resolved against the rootfs
    (root / "up").symlink_to("../../../..")
    (root / "loop").symlink_to("loop")
    assert secure_join(root, "/etc/passwd") == root / "etc" / "shadow"
    assert secure_join(root, "/up/etc/passwd") == root / "etc" / "shadow"
    assert secure_join(root, "../../x") == root / "x"
    with pytest.raises(RootfsPathError):
        secure_join(root, "/loop/x")


def test_read_rootfs_file_never_reads_the_host(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").symlink_to("/etc/hostname")
    assert read_rootfs_file(root, "/etc/passwd") is None  # root/etc/hostname does not exist
    (root / "etc" / "hostname").write_text("inside")
    assert read_rootfs_file(root, "/etc/passwd") == "inside"
    (root / "etc" / "group").mkdir()
    assert read_rootfs_file(root, "/etc/group") is None
    os.mkfifo(root / "etc" / "fifo")
    assert read_rootfs_file(root, "/etc/fifo") is None  # never blocks on a fifo


def test_ensure_rootfs_dir_stays_inside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to("/tmp/definitely-not-created-by-pycri")
    made = ensure_rootfs_dir(root, "/escape/vol")
    assert made == root / "tmp" / "definitely-not-created-by-pycri" / "vol" and made.is_dir()
    assert not os.path.exists("/tmp/definitely-not-created-by-pycri")
