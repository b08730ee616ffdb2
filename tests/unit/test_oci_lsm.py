"""AppArmor and SELinux for containers: the profile chosen, pycri's own profile and its loading, the labels."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import stat

import pytest

from cri.oci import apparmor, selinux
from cri.oci import spec as S, spec_inputs as SI
from cri.oci.users import ResolvedUser


@pytest.mark.parametrize("kind,ref,privileged,on,expected", [
    ("", "", False, True, "pycri-default"),  # kubelet's default is the runtime's default
    ("runtime/default", "", False, True, "pycri-default"),
    ("runtime/default", "", True, True, "unconfined"),  # privileged: unconfined, as containerd does
    ("unconfined", "", False, True, "unconfined"),
    ("localhost", "mine", False, True, "mine"),
    ("localhost", "localhost/mine", True, True, "mine"),  # critest sends the prefix; privileged keeps a named one
    ("", "", False, False, ""),  # no AppArmor: nothing to set
    ("runtime/default", "", False, False, ""),
    ("unconfined", "", False, False, ""),
])
def test_choice(kind, ref, privileged, on, expected):
    assert apparmor.choose(kind, ref, privileged, on) == expected


@pytest.mark.parametrize("ref,on,message", [("mine", False, "not enabled"), ("", True, "needs a profile name"),
                                            ("localhost/", True, "needs a profile name")])
def test_refused_choices(ref, on, message):
    with pytest.raises(apparmor.AppArmorError, match=message):
        apparmor.choose("localhost", ref, False, on)


def test_loaded_profiles_are_read_from_the_kernel_list(tmp_path):
    listing = tmp_path / "profiles"
    listing.write_text("pycri-default (enforce)\n/usr/bin/man (enforce)\nwith space (complain)\n")
    assert apparmor.loaded(listing) == {"pycri-default", "/usr/bin/man", "with space"}
    assert apparmor.loaded(tmp_path / "missing") == set()
    enabled = tmp_path / "enabled"
    enabled.write_text("Y\n")
    assert apparmor.enabled(enabled) and not apparmor.enabled(tmp_path / "missing")


def test_the_default_profile_text():
    text = apparmor.profile_text()
    assert text.count("{") == text.count("}")
    assert "profile pycri-default flags=(attach_disconnected,mediate_deleted) {" in text
    for rule in ("deny mount,", "signal (send, receive) peer=pycri-default,", "deny @{PROC}/sysrq-trigger rwklx,",
                 "#include <abstractions/base>", "#include <tunables/global>"):
        assert rule in text


def fake_parser(tmp_path, listing, exit_code=0):
    """An apparmor_parser that records its arguments and input, and 'loads' by listing the profile."""
    script = tmp_path / "apparmor_parser"
    script.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\ncat > {tmp_path}/input\n"
                      f"[ {exit_code} -eq 0 ] || {{ echo 'syntax error, line 3' >&2; exit {exit_code}; }}\n"
                      f"echo 'pycri-default (enforce)' >> {listing}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_the_default_is_loaded_once_when_needed(tmp_path):
    listing = tmp_path / "profiles"
    listing.write_text("")
    loader = apparmor.Loader(fake_parser(tmp_path, listing), listing)

    async def scenario():
        await asyncio.gather(loader.require("pycri-default"), loader.require("pycri-default"))
        await loader.require("pycri-default")
        await loader.require("unconfined")
        await loader.require("")

    asyncio.run(scenario())
    assert listing.read_text() == "pycri-default (enforce)\n"  # one load for three asks
    assert (tmp_path / "args").read_text().split() == ["--replace", "--skip-cache"]
    assert (tmp_path / "input").read_text() == apparmor.profile_text()


def test_a_named_profile_must_be_loaded_and_a_failed_load_says_why(tmp_path):
    listing = tmp_path / "profiles"
    listing.write_text("mine (enforce)\n")
    loader = apparmor.Loader(fake_parser(tmp_path, listing, exit_code=1), listing)
    asyncio.run(loader.require("mine"))
    with pytest.raises(apparmor.AppArmorError, match="'other' is not loaded"):
        asyncio.run(loader.require("other"))
    with pytest.raises(apparmor.AppArmorError, match="syntax error, line 3"):
        asyncio.run(loader.require("pycri-default"))
    missing = apparmor.Loader(str(tmp_path / "no-parser"), listing)
    with pytest.raises(apparmor.AppArmorError, match="apt-get install apparmor"):
        asyncio.run(missing.require("pycri-default"))


@pytest.mark.parametrize("options,on,expected", [
    ({"type": "spc_t"}, True, "system_u:system_r:spc_t:s0"),
    ({"user": "u", "role": "r", "type": "t", "level": "s0:c1,c2"}, True, "u:r:t:s0:c1,c2"),
    ({}, True, ""),
    ({"type": "spc_t"}, False, ""),  # SELinux off: ignored
])
def test_selinux_label(options, on, expected):
    assert selinux.process_label(options, on) == expected


def test_selinux_is_on_when_its_filesystem_is_mounted(tmp_path):
    assert not selinux.enabled(tmp_path)
    (tmp_path / "enforce").write_text("1")
    assert selinux.enabled(tmp_path)


def test_the_spec_carries_the_profile_and_label():
    base = dict(container_id="c", rootfs="/r", command=["true"], user=ResolvedUser())
    spec = S.container_spec(SI.ContainerInputs(**base, apparmor_profile="pycri-default",
                                              selinux_label="system_u:system_r:container_t:s0"))
    assert spec["process"]["apparmorProfile"] == "pycri-default"
    assert spec["process"]["selinuxLabel"] == "system_u:system_r:container_t:s0"
    plain = S.container_spec(SI.ContainerInputs(**base))
    assert "apparmorProfile" not in plain["process"] and "selinuxLabel" not in plain["process"]


@pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser is not installed")
def test_apparmor_parser_accepts_the_default_profile():
    """Parse only (-Q): no kernel AppArmor needed, just the parser and its /etc/apparmor.d includes."""
    done = subprocess.run(["apparmor_parser", "--skip-kernel-load", "--skip-cache"],
                          input=apparmor.profile_text().encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
