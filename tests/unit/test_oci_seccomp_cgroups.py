"""The RuntimeDefault profile, Localhost profile conversion, cgroup layout parsing and exit reasons."""

from __future__ import annotations

import pytest

from cri.core.containers import exit_reason, signal_number
from cri.errors import InvalidArgument
from cri.oci import cgroups, seccomp


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
    assert len(clone_rules) == 8 and all(r["args"][0]["op"] == "SCMP_CMP_MASKED_EQ" for r in clone_rules)
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
    assert v2.is_v2 and [str(p) for p in cgroups.cgroup_dirs("/pod/c", v2)] == ["/sys/fs/cgroup/pod/c"]


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
