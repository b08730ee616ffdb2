import pytest

from cri.config import Config, ConfigError, load_config, to_toml


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_match_what_operators_expect(tmp_path):
    c = load_config(write(tmp_path / "empty.conf", ""), environ={})
    assert c.root.as_posix() == "/var/lib/pycri"
    assert c.socket_path.as_posix() == "/run/pycri/pycri.sock"
    assert c.socket_mode == 0o660
    assert set(c.runtime.handlers) == {"runc", "crun"}
    assert c.runtime.default_runtime in {"runc", "crun"}  # which one: the tests below
    assert c.runtime.cgroup_manager == "auto"
    assert c.streaming.address == "127.0.0.1" and c.streaming.port == 0


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.conf", environ={"PYCRI_CONFIG": str(tmp_path / "nope.conf")})


def test_dropins_apply_in_lexical_order_over_the_main_file(tmp_path):
    main = write(tmp_path / "pycri.conf", 'log_level = "warning"\n[streaming]\nport = 1000\n')
    d = tmp_path / "pycri.conf.d"
    d.mkdir()
    write(d / "20-b.conf", "[streaming]\nport = 2000\n")
    write(d / "10-a.conf", '[streaming]\nport = 1500\naddress = "127.0.0.2"\n')
    c = load_config(main, environ={})
    assert c.streaming.port == 2000
    assert c.streaming.address == "127.0.0.2"
    assert c.log_level == "warning"


def test_environment_and_flags_override_files(tmp_path):
    main = write(tmp_path / "pycri.conf", 'log_level = "warning"\n')
    c = load_config(main, overrides={"root": "/srv/pycri"},
                    environ={"PYCRI_LOG_LEVEL": "debug", "PYCRI_STREAMING__PORT": "4321"})
    assert c.log_level == "debug"
    assert c.streaming.port == 4321
    assert c.root.as_posix() == "/srv/pycri"


def test_unknown_key_names_the_file_and_the_key(tmp_path):
    d = tmp_path / "pycri.conf.d"
    d.mkdir()
    main = write(tmp_path / "pycri.conf", "")
    bad = write(d / "50-bad.conf", "[network]\ncni_confdir = '/x'\n")
    with pytest.raises(ConfigError) as e:
        load_config(main, environ={})
    assert str(bad) in str(e.value)
    assert "network.cni_confdir" in str(e.value)
    assert "unknown key" in str(e.value)


def test_bad_value_names_the_key(tmp_path):
    main = write(tmp_path / "pycri.conf", "[streaming]\nport = 70000\n")
    with pytest.raises(ConfigError) as e:
        load_config(main, environ={})
    assert "streaming.port" in str(e.value) and str(main) in str(e.value)


def test_listen_must_be_a_unix_socket(tmp_path):
    main = write(tmp_path / "pycri.conf", 'listen = "tcp://0.0.0.0:1"\n')
    with pytest.raises(ConfigError, match="listen"):
        load_config(main, environ={})


def test_invalid_toml_is_reported_with_the_file(tmp_path):
    main = write(tmp_path / "pycri.conf", "root = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(main, environ={})


def test_printed_config_reads_back_identically(tmp_path):
    c = load_config(write(tmp_path / "empty.conf", ""), environ={"PYCRI_STREAMING__PORT": "99"})
    again = load_config(write(tmp_path / "round.conf", to_toml(c)), environ={})
    assert again == c
    assert isinstance(again, Config)


def test_default_runtime_must_be_a_configured_handler(tmp_path):
    main = write(tmp_path / "pycri.conf", '[runtime]\ndefault_runtime = "kata"\n')
    with pytest.raises(ConfigError, match="kata"):
        load_config(main, environ={})


@pytest.fixture
def installed(monkeypatch):
    """The runtime binaries the automatic default finds: a set of names (or paths) that are installed."""
    found: set[str] = set()
    monkeypatch.setattr("cri.config.find_binary", lambda name: f"/usr/bin/{name}" if name in found else None)
    return found


def test_without_default_runtime_pods_get_crun_when_it_is_installed(tmp_path, installed):
    installed.update({"crun", "runc"})
    assert load_config(write(tmp_path / "empty.conf", ""), environ={}).runtime.default_runtime == "crun"
    installed.discard("crun")
    assert load_config(write(tmp_path / "empty.conf", ""), environ={}).runtime.default_runtime == "runc"
    installed.clear()  # neither: runc, and Status says it is missing
    assert load_config(write(tmp_path / "empty.conf", ""), environ={}).runtime.default_runtime == "runc"


def test_the_automatic_default_follows_the_handler_table(tmp_path, installed):
    installed.update({"crun", "runc", "/opt/crun-1.19"})
    table = '[runtime.handlers.runc]\npath = "runc"\n[runtime.handlers.crun]\npath = "{}"\n'
    conf = write(tmp_path / "a.conf", table.format("/opt/crun-1.19"))
    assert load_config(conf, environ={}).runtime.default_runtime == "crun"
    conf = write(tmp_path / "b.conf", table.format("/opt/missing/crun"))
    assert load_config(conf, environ={}).runtime.default_runtime == "runc"
    conf = write(tmp_path / "c.conf", '[runtime.handlers.runc]\npath = "runc"\n')  # a table without crun
    assert load_config(conf, environ={}).runtime.default_runtime == "runc"
    only_kata = write(tmp_path / "d.conf", '[runtime]\nhandlers = {kata = {path = "kata-runtime"}}\n')
    with pytest.raises(ConfigError, match="default_runtime is unset and none of crun, runc.*set it to one of "
                                          r"\['kata'\]"):
        load_config(only_kata, environ={})


def test_an_explicit_default_runtime_is_always_honoured(tmp_path, installed):
    installed.update({"crun", "runc"})
    conf = write(tmp_path / "pycri.conf", '[runtime]\ndefault_runtime = "runc"\n')
    assert load_config(conf, environ={}).runtime.default_runtime == "runc"
    env = {"PYCRI_RUNTIME__DEFAULT_RUNTIME": "runc"}
    assert load_config(write(tmp_path / "empty.conf", ""), environ=env).runtime.default_runtime == "runc"
    installed.clear()  # named, not installed: still that one (Status says it is missing)
    conf = write(tmp_path / "crun.conf", '[runtime]\ndefault_runtime = "crun"\n')
    assert load_config(conf, environ={}).runtime.default_runtime == "crun"


def test_a_bad_pinned_image_pattern_names_the_file_key_and_pattern(tmp_path):
    conf = write(tmp_path / "pycri.conf", '[storage]\npinned_images = ["registry.k8s.io/*", "exa*mple"]\n')
    with pytest.raises(ConfigError, match=r"pycri.conf: storage.pinned_images: .*'exa\*mple'.*may only end"):
        load_config(conf, environ={})
    good = write(tmp_path / "good.conf", '[storage]\npinned_images = ["registry.k8s.io/*", "*pause*", "busybox"]\n')
    assert load_config(good, environ={}).storage.pinned_images == ["registry.k8s.io/*", "*pause*", "busybox"]


def test_fault_switches_in_the_environment_are_not_configuration(tmp_path):
    """(Test knobs are not PYCRI_* names: TEST_CGROUP_MANAGER, NODEVM_TIME_SCALE.)"""
    conf = write(tmp_path / "pycri.conf", "")
    c = load_config(conf, environ={"PYCRI_FAULT_CRASH_AT": "x", "PYCRI_LOG_LEVEL": "debug"})
    assert c.log_level == "debug"
