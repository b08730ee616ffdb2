"""Sandbox rules that need no host: sysctl validation, resolv.conf and hosts rendering, hostnames."""

import pytest
from hypothesis import given, strategies as st

from cri.core.sandboxes.files import render_hosts, render_resolv_conf, validate_hostname, validate_sysctls
from cri.errors import InvalidArgument


def test_namespaced_sysctls_map_to_proc_paths():
    assert validate_sysctls({"kernel.shm_rmid_forced": "1", "net.ipv4.ip_forward": "1", "fs.mqueue.msg_max": "20",
                             "net/ipv4/conf/eth0.100/forwarding": "1", "kernel.sem": "250 32000 32 128"},
                            host_network=False, host_ipc=False) == {
        "kernel/shm_rmid_forced": "1", "net/ipv4/ip_forward": "1", "fs/mqueue/msg_max": "20",
        "net/ipv4/conf/eth0.100/forwarding": "1", "kernel/sem": "250 32000 32 128"}


@pytest.mark.parametrize("name, host_net, host_ipc", [
    ("kernel.pid_max", False, False), ("vm.swappiness", False, False), ("kernel.hostname", False, False),
    ("net.ipv4.ip_forward", True, False), ("kernel.msgmax", False, True), ("net/../../kernel/x", False, False),
    ("Net.ipv4.x", False, False), ("", False, False)])
def test_other_sysctls_are_invalid_arguments(name, host_net, host_ipc):
    with pytest.raises(InvalidArgument):
        validate_sysctls({name: "1"}, host_network=host_net, host_ipc=host_ipc)


def test_sysctl_value_cannot_inject_a_line():
    with pytest.raises(InvalidArgument):
        validate_sysctls({"net.ipv4.ip_forward": "1\n0"}, host_network=False, host_ipc=False)


def test_resolv_conf_rendering():
    assert render_resolv_conf(["10.0.0.10", "fd00::a"], ["ns.svc.cluster.local", "cluster.local"],
                              ["ndots:5", "edns0"]) == (
        "nameserver 10.0.0.10\nnameserver fd00::a\nsearch ns.svc.cluster.local cluster.local\n"
        "options ndots:5 edns0\n")
    assert render_resolv_conf([], [], []) == ""


@given(st.text(min_size=1, max_size=30))
def test_resolv_conf_never_gains_an_extra_line(item):
    try:
        text = render_resolv_conf([], [item], [item])
    except InvalidArgument:
        return
    assert text.count("\n") == 2


@pytest.mark.parametrize("servers", [["8.8.8.8\nnameserver 1.1.1.1"], ["dns.example"], [""]])
def test_bad_servers_are_rejected(servers):
    with pytest.raises(InvalidArgument):
        render_resolv_conf(servers, [], [])


def test_too_many_search_domains():
    with pytest.raises(InvalidArgument):
        render_resolv_conf([], [f"d{i}.example" for i in range(33)], [])


def test_hosts_lists_localhost_and_the_pod_ips():
    text = render_hosts("web-0", ["10.88.0.5", "fd00::5"])
    assert text.startswith("127.0.0.1\tlocalhost\n")
    assert text.endswith("10.88.0.5\tweb-0\nfd00::5\tweb-0\n")


@pytest.mark.parametrize("name", ["web-0", "a.b.c", "x" * 63])
def test_valid_hostnames(name):
    assert validate_hostname(name) == name


@pytest.mark.parametrize("name", ["-bad", "bad-", "a b", "x" * 65, "a..b", "a\nb", ""])
def test_invalid_hostnames(name):
    with pytest.raises(InvalidArgument):
        validate_hostname(name)


def test_bandwidth_annotations_become_the_cni_capability():
    from cri.core.sandboxes.files import parse_bandwidth

    assert parse_bandwidth({}) is None
    assert parse_bandwidth({"kubernetes.io/ingress-bandwidth": "10M", "kubernetes.io/egress-bandwidth": "1Mi"}) == {
        "ingressRate": 10_000_000, "ingressBurst": 2**31 - 1, "egressRate": 1 << 20, "egressBurst": 2**31 - 1}
    for bad in ("fast", "10X", "1", "-5M"):
        with pytest.raises(InvalidArgument):
            parse_bandwidth({"kubernetes.io/ingress-bandwidth": bad})
