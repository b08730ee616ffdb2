"""Which kernels can build an overlay on idmapped layers."""

import pytest

from storage.idmap import kernel_problem


@pytest.mark.parametrize("release, ok", [("6.18.44-fc-v1147", True), ("6.1.0-26-amd64", True), ("5.19.0", True),
                                         ("5.15.0-91-generic", False), ("4.19.0", False)])
def test_kernel_problem(release, ok):
    problem = kernel_problem(release)
    assert (problem is None) is ok
    if not ok:
        assert release in problem and "5.19" in problem


def test_an_unreadable_release_is_a_problem():
    assert "cannot read" in kernel_problem("weird")
