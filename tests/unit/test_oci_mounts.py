"""Which host mounts can carry rshared / rslave propagation, from mountinfo text."""

import pytest

from cri.oci import mounts
from cri.oci.mounts import propagation_problem
from hostos import mountinfo

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 27 0:50 / /srv/shared rw shared:7 - tmpfs tmpfs rw
41 27 0:51 / /srv/slave rw master:7 - tmpfs tmpfs rw
42 27 0:52 / /srv/private rw - tmpfs tmpfs rw
43 40 0:53 / /srv/shared/inner rw - tmpfs tmpfs rw
44 27 0:54 / /srv/with\\040space rw shared:9 - tmpfs tmpfs rw
"""


@pytest.mark.parametrize("path,mode,ok", [
    ("/srv/shared/d", "rshared", True), ("/srv/shared/d", "rslave", True),
    ("/srv/slave/d", "rshared", False), ("/srv/slave/d", "rslave", True),
    ("/srv/private/d", "rslave", False), ("/srv/private/d", "private", True),
    ("/srv/shared/inner/d", "rshared", False),
])
def test_propagation_needs(path, mode, ok):
    problem = propagation_problem(path, mode, mountinfo.parse(MOUNTINFO))
    assert (problem is None) is ok
    if problem:
        assert "mount --make-rshared" in problem


@pytest.mark.parametrize("release,wanted,expected", [
    ("6.18.44-fc-v857", (5, 12), True), ("5.12.0", (5, 12), True), ("5.11.22-generic", (5, 12), False),
    ("5.19.0", (5, 19), True), ("4.19.0-25-amd64", (5, 12), False), ("garbage", (5, 12), False),
])
def test_kernel_at_least(release, wanted, expected):
    assert mounts.kernel_at_least(release, wanted) is expected


@pytest.mark.parametrize("features,version,expected", [
    ('{"mountOptions": ["ro", "rro", "rbind"]}', "", True),        # runc 1.1+ features document
    ('{"mountOptions": ["ro", "rbind"]}', "", False),
    ('{"ociVersionMax": "1.0.2"}', "", False),
    ("not json", "", False),
    (None, "crun version 1.8.1\ncommit: f8a0\n", True),             # crun before `crun features`
    (None, "crun version 1.7\n", False),
    (None, "runc version 1.0.0\n", False),                          # no features document: unknown, so no
    (None, "", False),
])
def test_runtime_supports_rro(features, version, expected):
    assert mounts.runtime_supports_rro(features, version) is expected


RUNC_11_FEATURES = '{"ociVersionMax": "1.0.2-dev", "mountOptions": ["rro"], "linux": {"namespaces": ["user"]}}'


@pytest.mark.parametrize("features,version,expected", [
    ('{"linux": {"mountExtensions": {"idmap": {"enabled": true}}}}', "", True),   # runc 1.2+, crun 1.9+
    ('{"linux": {"mountExtensions": {"idmap": {"enabled": false}}}}', "", False),
    (RUNC_11_FEATURES, "", False),                                                # runc 1.1 ignores mappings
    ("not json", "", False),
    (None, "crun version 1.8.1\ncommit: f8a0\n", True),                           # crun before `crun features`
    (None, "crun version 1.8\n", False),
    (None, "crun version 1.10\n", True),
    (None, "runc version 1.1.5\n", False),
    (None, "", False),
])
def test_runtime_supports_idmap(features, version, expected):
    assert mounts.runtime_supports_idmap(features, version) is expected
