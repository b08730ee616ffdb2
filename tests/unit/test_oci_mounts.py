"""Which host mounts can carry rshared / rslave propagation, from mountinfo text."""

import pytest

from cri.oci.mounts import mount_of, propagation_problem

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/shared rw shared:7 - tmpfs tmpfs rw
41 27 0:51 / /srv/slave rw master:7 - tmpfs tmpfs rw
42 27 0:52 / /srv/private rw - tmpfs tmpfs rw
43 40 0:53 / /srv/shared/inner rw - tmpfs tmpfs rw
44 27 0:54 / /srv/with\\040space rw shared:9 - tmpfs tmpfs rw
"""


def test_the_deepest_mount_holds_the_path():
    assert mount_of("/srv/shared/a/b", MOUNTINFO) == ("/srv/shared", {"shared"})
    assert mount_of("/srv/shared/inner/x", MOUNTINFO) == ("/srv/shared/inner", set())
    assert mount_of("/srv/sharedx", MOUNTINFO) == ("/", set())
    assert mount_of("/srv/with space/f", MOUNTINFO)[0] == "/srv/with space"


@pytest.mark.parametrize("path,mode,ok", [
    ("/srv/shared/d", "rshared", True), ("/srv/shared/d", "rslave", True),
    ("/srv/slave/d", "rshared", False), ("/srv/slave/d", "rslave", True),
    ("/srv/private/d", "rslave", False), ("/srv/private/d", "private", True),
    ("/srv/shared/inner/d", "rshared", False),
])
def test_propagation_needs(path, mode, ok):
    problem = propagation_problem(path, mode, MOUNTINFO)
    assert (problem is None) is ok
    if problem:
        assert "mount --make-rshared" in problem
