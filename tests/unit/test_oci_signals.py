"""Stop signal names as images and the CRI spell them."""

from __future__ import annotations

import signal

import pytest

from cri.api.v1 import api_pb2
from cri.oci.signals import signal_number
from cri.server.container_convert import cri_signal


@pytest.mark.parametrize("name,number", [
    ("", signal.SIGTERM), ("SIGTERM", signal.SIGTERM), ("term", signal.SIGTERM), ("9", 9), ("QUIT", signal.SIGQUIT),
    ("SIGRTMIN", signal.SIGRTMIN), ("SIGRTMIN+3", signal.SIGRTMIN + 3), ("SIGRTMINPLUS3", signal.SIGRTMIN + 3),
    ("RTMAX-2", signal.SIGRTMAX - 2), ("SIGRTMAXMINUS2", signal.SIGRTMAX - 2), ("SIGIOT", signal.SIGABRT),
])
def test_names_to_numbers(name, number):
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["SIGBOGUS", "SIGRTMIN+99", "SIGRTMAX-40", "SIG"])
def test_unknown_names_fail(name):
    with pytest.raises(ValueError):
        signal_number(name)


def test_every_cri_signal_name_is_understood_and_reported_back():
    """Whatever StopContainer can be asked to send, ContainerStatus reports by the same (first) CRI name."""
    for name, value in api_pb2.Signal.items():
        if value != api_pb2.RUNTIME_DEFAULT:
            number = signal_number(name)
            assert signal_number(api_pb2.Signal.Name(cri_signal(name))) == number
    assert cri_signal("") == api_pb2.SIGTERM and cri_signal("SIGRTMIN+1") == api_pb2.SIGRTMINPLUS1
    assert cri_signal("SIGCLD") == api_pb2.SIGCHLD
    assert cri_signal("nonsense") == api_pb2.RUNTIME_DEFAULT
