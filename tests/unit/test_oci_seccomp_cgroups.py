"""The RuntimeDefault profile, Localhost profile conversion, cgroup layout parsing and exit reasons."""

from __future__ import annotations

import pytest

from cri.core.containers import container_log_path, exit_reason, signal_number
from cri.errors import InvalidArgument
from cri.oci import seccomp
from hostos import cgroups, netdev


def denied(profile) -> set[str]:
    return set(profile["syscalls"][0]["names"])


def test_default_profile_denies_the_dangerous_syscalls():
    profile = seccomp.default_profile(frozenset(), "6.1.0", "x86_64")
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW"
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    for name in ("kexec_load", "init_module", "finit_module", "delete_module", "mount", "umount2", "reboot",
                 "swapon", "bpf", "perf_event_open", "unshare", "setns", "keyctl", "add_key", "request_key",
                 "open_by_handle_at", "userfaultfd", "acct", "settimeofday", "clock_settime", "pivot_root",
                 "quotactl", "lookup_dcookie", "vm86"):
        assert name in denied(profile), name
    assert "ptrace" not in denied(profile)
    clone_rules = [r for r in profile["syscalls"] if r["names"] == ["clone"]]
    assert len(clone_rules) == 8
    assert all(r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for r in clone_rules)
    assert any(r["names"] == ["clone3"] and r["errnoRet"] == seccomp.ENOSYS for r in profile["syscalls"])


def test_capabilities_lift_their_syscalls():
    profile = seccomp.default_profile(frozenset({"CAP_SYS_ADMIN", "CAP_SYS_TIME"}), "6.1.0", "x86_64")
    assert not {"mount", "unshare", "setns", "settimeofday"} & denied(profile)
    assert "keyctl" in denied(profile) and "reboot" in denied(profile)
    assert not [r for r in profile["syscalls"] if r["names"] in (["clone"], ["clone3"])]


def test_ptrace_is_denied_on_old_kernels():
    assert "ptrace" in denied(seccomp.default_profile(frozenset(), "4.4.0", "x86_64"))


def test_docker_profile_conversion_filters_by_capability_and_arch():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": []}],
        "syscalls": [
            {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
            {"names": ["chown"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_CHOWN"]}},
        ]}
    out = seccomp.to_oci(profile, frozenset({"CAP_CHOWN"}), "x86_64")
    assert out["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert out["defaultErrnoRet"] == 1
    assert [r["names"] for r in out["syscalls"]] == [["read", "write"]]
    with_admin = seccomp.to_oci(profile, frozenset({"CAP_SYS_ADMIN"}), "x86_64")
    assert ["mount"] in [r["names"] for r in with_admin["syscalls"]]


@pytest.mark.parametrize("bad", [[], {"syscalls": []}, {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"]}]},
                                 {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ERRNO"}]}])
def test_bad_profiles(bad):
    with pytest.raises(seccomp.SeccompProfileError):
        seccomp.to_oci(bad)


MOUNTINFO_V1 = """\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
"""
MOUNTINFO_V2 = "30 24 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"


def test_mountinfo_parsing_v1_hybrid_and_v2():
    v1 = cgroups.parse_mountinfo(MOUNTINFO_V1)
    assert not v1.is_v2 and v1.unified is not None
    assert str(v1.v1["cpu"]) == str(v1.v1["cpuacct"]) == "/sys/fs/cgroup/cpu,cpuacct"
    assert "systemd" not in v1.v1
    v2 = cgroups.parse_mountinfo(MOUNTINFO_V2)
    assert v2.is_v2
    assert [str(p) for p in cgroups.cgroup_dirs("/pod/c", v2)] == ["/sys/fs/cgroup/pod/c"]


def test_stats_of_a_missing_cgroup_are_empty_not_an_error():
    stats = cgroups.read_stats("/pycri-unit-test-does-not-exist")
    assert stats.cpu_usage_ns is None and stats.memory_usage is None


@pytest.mark.parametrize("code,oom,reason", [(0, False, "Completed"), (1, False, "Error"), (137, True, "OOMKilled"),
                                             (137, False, "Error")])
def test_exit_reason(code, oom, reason):
    assert exit_reason(code, oom) == reason


@pytest.mark.parametrize("name,number", [("", 15), ("SIGKILL", 9), ("TERM", 15), ("2", 2), ("sigquit", 3)])
def test_signal_names(name, number):
    assert signal_number(name) == number


def test_unknown_signal():
    with pytest.raises(InvalidArgument):
        signal_number("SIGNOPE")


def test_stats_from_a_v2_tree(tmp_path):
    pod = tmp_path / "pod" / "c1"
    pod.mkdir(parents=True)
    (pod / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")
    (pod / "memory.current").write_text("10000\n")
    (pod / "memory.stat").write_text("anon 4000\ninactive_file 3000\npgfault 77\npgmajfault 2\n")
    (pod / "memory.max").write_text("max\n")
    (pod / "pids.current").write_text("3\n")
    stats = cgroups.read_stats("/pod/c1", cgroups.Layout(unified=tmp_path, v1={}))
    assert (stats.cpu_usage_ns, stats.memory_usage, stats.memory_working_set, stats.memory_rss) == (1_500_000, 10000,
                                                                                                  7000, 4000)
    assert (stats.page_faults, stats.major_page_faults, stats.memory_limit, stats.pids) == (77, 2, None, 3)


def test_stats_from_a_v1_tree(tmp_path):
    for controller in ("cpuacct", "memory", "pids"):
        (tmp_path / controller / "pod" / "c1").mkdir(parents=True)
    base = lambda c: tmp_path / c / "pod" / "c1"  # noqa: E731
    (base("cpuacct") / "cpuacct.usage").write_text("123456789\n")
    (base("memory") / "memory.usage_in_bytes").write_text("5000\n")
    (base("memory") / "memory.stat").write_text("cache 1\ntotal_inactive_file 6000\ntotal_rss 900\n"
                                                 "total_pgfault 10\ntotal_pgmajfault 1\n")
    (base("memory") / "memory.limit_in_bytes").write_text(str(1 << 63 - 1) + "\n")
    (base("pids") / "pids.current").write_text("2\n")
    layout = cgroups.Layout(unified=None, v1={c: tmp_path / c for c in ("cpuacct", "memory", "pids")})
    stats = cgroups.read_stats("/pod/c1", layout)
    assert (stats.cpu_usage_ns, stats.memory_usage, stats.memory_working_set) == (123456789, 5000, 0)  # never < 0
    assert (stats.memory_rss, stats.page_faults, stats.memory_limit, stats.pids) == (900, 10, None, 2)
    assert [str(p) for p in cgroups.cgroup_dirs("/pod/c1", layout)][:3] == [str(base(c)) for c in
                                                                            ("cpuacct", "memory", "pids")]


def test_crun_hybrid_problem_names_the_controllers_and_the_mount(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("hugetlb\n")
    layout = cgroups.Layout(unified=tmp_path, v1={"memory": tmp_path / "memory"})
    problem = cgroups.crun_hybrid_problem(layout)
    assert "hugetlb" in problem
    assert "mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb" in problem
    (tmp_path / "cgroup.controllers").write_text("\n")
    assert cgroups.crun_hybrid_problem(layout) is None
    assert cgroups.crun_hybrid_problem(cgroups.Layout(unified=tmp_path, v1={})) is None  # pure v2 is fine


@pytest.mark.parametrize("directory,path,expected", [
    ("/logs/pod", "c/0.log", "/logs/pod/c/0.log"), ("/logs/pod/", "c.log", "/logs/pod/c.log"), ("/logs", "", ""),
    ("", "/abs/c.log", "/abs/c.log")])
def test_container_log_path(directory, path, expected):
    assert container_log_path(directory, path) == expected


@pytest.mark.parametrize("directory,path", [("/logs/pod", "../other/c.log"), ("/logs/pod", "/etc/passwd"),
                                            ("", "relative.log"), ("/logs/pod", "..")])
def test_container_log_path_never_leaves_the_directory(directory, path):
    with pytest.raises(InvalidArgument):
        container_log_path(directory, path)


def test_net_dev_parsing_skips_loopback():
    text = ("Inter-|   Receive |  Transmit\n face |bytes packets errs drop fifo frame compressed multicast|...\n"
            "    lo: 100 1 0 0 0 0 0 0 100 1 0 0 0 0 0 0\n"
            "  eth0: 2000 10 3 0 0 0 0 0 4000 20 5 0 0 0 0 0\n")
    assert netdev.parse_net_dev(text) == [netdev.InterfaceStats("eth0", 2000, 3, 4000, 5, rx_packets=10,
                                                                tx_packets=20)]


def test_a_localhost_seccomp_profile_that_is_a_fifo_is_read_once_written_and_not_waited_on_for_good(
        tmp_path, monkeypatch):
    import json
    import os
    import threading
    import time

    from cri.core.containers import specgen
    from cri.errors import InvalidArgument

    fifo = tmp_path / "profile.json"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w") as f:
            f.write(json.dumps({"defaultAction": "SCMP_ACT_ALLOW"}))

    threading.Thread(target=writer, daemon=True).start()
    assert specgen._load_profile(str(fifo)) == {"defaultAction": "SCMP_ACT_ALLOW"}
    monkeypatch.setattr(specgen, "PROFILE_FIFO_WAIT", 0.3)  # nobody writes it now
    t0 = time.monotonic()
    with pytest.raises(InvalidArgument, match="profile.json cannot be read: a FIFO whose writer did not finish"):
        specgen._load_profile(str(fifo))
    assert time.monotonic() - t0 < 5
    with pytest.raises(InvalidArgument, match="not a regular file"):
        specgen._load_profile("/dev/zero")
