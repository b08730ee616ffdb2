from cri.check import findings, report
from cri.config import Config


def config(tmp_path, **runtime):
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir(exist_ok=True)
    return Config.model_validate({"network": {"cni_conf_dir": str(conf_dir)}, "runtime": runtime}), conf_dir


def by_name(items):
    return {f.name: f for f in items}


def test_a_missing_default_runtime_fails_with_the_package_to_install(tmp_path, capsys):
    c, conf_dir = config(tmp_path, handlers={"runc": {"path": "/nonexistent/runc"}}, default_runtime="runc")
    (conf_dir / "10-net.conflist").write_text("{}")
    found = by_name(findings(c))
    runc = found["runtime handler runc"]
    assert not runc.ok
    assert runc.required
    assert "apt-get install -y runc" in runc.fix
    assert report(c) == 1
    assert "[FAIL] runtime handler runc" in capsys.readouterr().out


def test_missing_cni_configuration_is_named_with_its_fix(tmp_path):
    c, _ = config(tmp_path)
    cni = by_name(findings(c))["CNI network configuration"]
    assert not cni.ok and "install-cni-default" in cni.fix


def test_a_configured_network_is_listed(tmp_path):
    c, conf_dir = config(tmp_path)
    (conf_dir / "10-net.conflist").write_text("{}")
    cni = by_name(findings(c))["CNI network configuration"]
    assert cni.ok and "10-net.conflist" in cni.detail


def test_systemd_asked_for_without_systemd_is_a_required_failure(tmp_path, monkeypatch):
    from hostos.cgroups import systemd

    monkeypatch.setattr(systemd, "SYSTEMD_RUN_DIR", tmp_path / "absent")
    manager = by_name(findings(config(tmp_path, cgroup_manager="systemd")[0]))["cgroup manager (systemd)"]
    assert not manager.ok
    assert manager.required
    assert "not PID 1" in manager.detail
    assert "cgroupfs" in manager.fix
    auto = by_name(findings(config(tmp_path, cgroup_manager="auto")[0]))["cgroup manager (auto)"]
    assert auto.ok and auto.detail == "cgroupfs"
