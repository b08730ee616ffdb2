"""A cpuset list is checked at the boundary: a typo is the caller's INVALID_ARGUMENT, not a kernel EINVAL."""

import pytest
from cri.api.v1 import api_pb2

from cri.errors import InvalidArgument
from cri.server.container_convert import resources_from_proto


@pytest.mark.parametrize("value", ["", "0", "0-3", "0-3,6", "1,3,5", "0-15:2/4", "2-2"])
def test_kernel_cpu_lists_are_accepted(value):
    spec = resources_from_proto(api_pb2.LinuxContainerResources(cpuset_cpus=value, cpuset_mems=value))
    assert (spec.cpuset_cpus, spec.cpuset_mems) == (value, value)


@pytest.mark.parametrize("field", ["cpuset_cpus", "cpuset_mems"])
@pytest.mark.parametrize("value", ["abc", "0-", "3-1", "0,,1", "0, 1", "-1", "0-3:2", "1\n", "0;1"])
def test_anything_else_is_invalid_and_named(field, value):
    with pytest.raises(InvalidArgument) as e:
        resources_from_proto(api_pb2.LinuxContainerResources(**{field: value}))
    assert field in str(e.value) and repr(value) in str(e.value)
