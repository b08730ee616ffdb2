"""The pure parts of the CNI protocol: CNI_ARGS, per-plugin stdin, errors and results of every version."""

import json

import pytest

from netplugins.errors import NetPluginError
from netplugins.invoke import cni_args, parse_error, plugin_env, plugin_stdin
from netplugins.manager import PodNetwork, PortMapping, capability_args
from netplugins.result import InvalidResult, parse_result


def test_cni_args_carry_the_kubernetes_pod_identity():
    assert cni_args("ns", "pod", "abc", "u-1") == (
        "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1")


@pytest.mark.parametrize("bad", ["a;b", "a=b", "a\0b"])
def test_cni_args_refuse_separators(bad):
    with pytest.raises(NetPluginError):
        cni_args(bad, "pod", "abc", "uid")


def test_env_has_the_spec_variables():
    env = plugin_env("ADD", "cid", "/run/ns", "eth0", "IgnoreUnknown=1", ["/a", "/b"])
    assert {k: env[k] for k in ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")} == {
        "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid", "CNI_NETNS": "/run/ns", "CNI_IFNAME": "eth0",
        "CNI_PATH": "/a:/b"}


def test_capability_args_go_only_to_plugins_that_declare_them():
    caps = {"portMappings": [{"hostPort": 80}], "ipRanges": [[{"subnet": "10.1.0.0/16"}]]}
    portmap = json.loads(plugin_stdin("net", "1.0.0", {"type": "portmap", "capabilities": {"portMappings": True}},
                                      {"ips": []}, caps))
    bridge = json.loads(plugin_stdin("net", "1.0.0", {"type": "bridge"}, None, caps))
    assert portmap["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert portmap["prevResult"] == {"ips": []}
    assert portmap["name"] == "net"
    assert portmap["cniVersion"] == "1.0.0"
    assert "runtimeConfig" not in bridge and "prevResult" not in bridge


def test_pod_capability_args():
    pod = PodNetwork("id", "n", "ns", "u", "/ns", port_mappings=(PortMapping(8080, 80, "tcp", "127.0.0.1"),
                                                              PortMapping(0, 81)),
                     pod_cidr="10.1.0.0/16, fd00::/64")
    assert capability_args(pod) == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
        "ipRanges": [[{"subnet": "10.1.0.0/16"}], [{"subnet": "fd00::/64"}]]}
    assert capability_args(PodNetwork("id", "n", "ns", "u", "/ns")) == {}


def test_plugin_error_object_is_surfaced():
    err = parse_error("bridge", "ADD", b'{"cniVersion":"1.0.0","code":7,"msg":"bad","details":"why"}', b"", 1)
    assert (err.code, err.msg, err.details) == (7, "bad", "why")
    assert "bridge ADD failed (code 7): bad: why" in str(err)
    plain = parse_error("x", "DEL", b"", b"panic: oops\n", 2)
    assert plain.details == "panic: oops" and "exit status 2" in str(plain)


V1 = {"cniVersion": "1.0.0",
      "interfaces": [{"name": "pycri0", "mac": "aa"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/ns"}],
      "ips": [{"address": "fd00::5/64", "interface": 2}, {"address": "10.88.0.5/16", "gateway": "10.88.0.1",
                                                          "interface": 2}],
      "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}


def test_result_1_0_prefers_ipv4_on_the_sandbox_interface():
    result = parse_result(V1)
    assert result.pod_ips() == ["10.88.0.5", "fd00::5"]
    assert result.ips[1].gateway == "10.88.0.1" and result.raw is V1


def test_result_0_3_and_0_4_with_version_fields():
    for version in ("0.3.1", "0.4.0"):
        data = {"cniVersion": version, "ips": [{"version": "4", "address": "10.9.0.2/24", "interface": 0}],
                "interfaces": [{"name": "eth0", "sandbox": "/ns"}]}
        assert parse_result(data).pod_ips() == ["10.9.0.2"]


def test_result_0_2_legacy_shape():
    result = parse_result({"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.3/8", "gateway": "10.0.0.1"}})
    assert result.pod_ips() == ["10.1.2.3"]


@pytest.mark.parametrize("bad", [[], {"ips": [{"address": "nonsense"}]}, {"ips": [{"address": "10.0.0.1/8",
                                                                                      "gateway": "x"}]},
                                 {"interfaces": [{"mac": "no name"}]}])
def test_invalid_results_are_rejected(bad):
    with pytest.raises(InvalidResult):
        parse_result(bad)
