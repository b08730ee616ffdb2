"""The Helm chart in charts/pycri, checked without helm (Debian 12 has none).

What these checks stand for: the values parse and their `config` block is a pycri.conf the daemon
accepts (also after Helm turns every number into a float), every value and helper the templates
use is defined, the template blocks are balanced, and the host mounts cover every path the
configured daemon touches.
"""

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from cri.config import Config

CHART = Path(__file__).resolve().parents[2] / "charts" / "pycri"
TEMPLATES = sorted((CHART / "templates").glob("*"))
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@pytest.fixture(scope="module")
def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


@pytest.fixture(scope="module")
def chart() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def template_text() -> str:
    return "\n".join(t.read_text() for t in TEMPLATES)


def lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def test_chart_metadata(chart):
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "pycri" == CHART.name
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert isinstance(chart["appVersion"], str)


def test_config_block_is_a_valid_pycri_conf(values):
    config = Config.model_validate(values["config"])
    assert config.listen.startswith("unix:///")


def test_config_block_survives_helms_numbers_as_floats(values):
    """Helm reads values through JSON, so toToml may write 60 as 60.0; pycri must still load it."""
    floated = json.loads(json.dumps(values["config"]), parse_int=float)
    assert Config.model_validate(floated) == Config.model_validate(values["config"])


def test_templates_use_only_defined_values(values, chart):
    text = template_text()
    used = set(re.findall(r"\.Values\.([A-Za-z0-9_.]+)", text))
    assert used, "no .Values reference found: the regex or the templates are broken"
    missing = sorted(path for path in used if not _defined(values, path))
    assert not missing, f"templates use undefined values: {missing}"
    chart_keys = {k[0].upper() + k[1:] for k in chart}
    assert set(re.findall(r"\.Chart\.(\w+)", text)) <= chart_keys


def _defined(values: dict, path: str) -> bool:
    try:
        lookup(values, path.rstrip("."))
        return True
    except KeyError:
        return False


def test_every_included_helper_is_defined():
    text = template_text()
    defined = set(re.findall(r'define\s+"([^"]+)"', text))
    included = set(re.findall(r'include\s+"([^"]+)"', text))
    assert included and included <= defined, f"undefined helpers: {included - defined}"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_template_actions_and_blocks_balance(template):
    text = template.read_text()
    assert text.count("{{") == text.count("}}")
    actions = re.findall(r"\{\{-?\s*(.*?)\s*-?\}\}", text, re.S)
    openers = sum(bool(re.match(r"(if|with|range|define)\b", a)) for a in actions)
    closers = sum(a == "end" for a in actions)
    assert openers == closers


def test_host_mounts_cover_every_path_the_daemon_uses(values):
    config = Config.model_validate(values["config"])
    mounts = {PurePosixPath(m["path"]): m for m in values["hostMounts"]}

    def mount_for(path) -> dict:
        path = PurePosixPath(path)
        covering = [m for p, m in mounts.items() if path == p or p in path.parents]
        assert covering, f"{path} is not under any host mount"
        return covering[0]

    assert mount_for(config.root).get("propagation") == "Bidirectional"
    assert mount_for(config.state_dir).get("propagation") == "Bidirectional"
    assert not mount_for(config.socket_path.parent).get("readOnly")
    assert mount_for("/var/log/pods").get("readOnly") is not True
    assert mount_for("/var/lib/kubelet/pods").get("propagation") == "HostToContainer"
    for path in [config.network.cni_conf_dir, *config.network.cni_plugin_dirs,
                 config.storage.registries_conf, "/sys/fs/cgroup"]:
        mount_for(path)


def test_host_mounts_are_well_formed(values):
    names = [m["name"] for m in values["hostMounts"]]
    assert len(names) == len(set(names)) and "chart-config" not in names
    for mount in values["hostMounts"]:
        assert DNS_LABEL.match(mount["name"]), mount
        assert mount["path"].startswith("/") and ".." not in mount["path"].split("/")
        assert mount.get("propagation") in (None, "Bidirectional", "HostToContainer")


def test_the_daemon_tolerates_every_taint_and_requests_resources(values):
    assert {"operator": "Exists"} in values["tolerations"]
    assert {"cpu", "memory"} <= set(values["resources"]["requests"])
    assert "memory" not in (values["resources"].get("limits") or {})


def test_the_pod_is_a_privileged_host_daemon():
    text = (CHART / "templates" / "daemonset.yaml").read_text()
    for required in ("kind: DaemonSet", "hostPID: true", "hostNetwork: true", "privileged: true",
                     'command: ["pycri", "daemon"]'):
        assert required in text


def _rendered_commands(values: dict) -> list[list[str]]:
    """Every `command:` of the DaemonSet, rendered without helm: the one template action in them is the
    socket path, which the values give."""
    socket_path = values["config"]["listen"].removeprefix("unix://")
    text = (CHART / "templates" / "daemonset.yaml").read_text().replace("{{ $socket | quote }}", json.dumps(socket_path))
    commands = [yaml.safe_load(line.split("command:", 1)[1]) for line in text.splitlines() if "command:" in line]
    assert commands and all("{{" not in " ".join(c) for c in commands)
    return commands


def test_the_chart_runs_the_image_that_make_image_builds_and_its_commands_resolve_there(values, chart):
    import sys

    sys.path.insert(0, str(CHART.parents[1]))
    from image.build import PACKAGES, PATH, PREFIX, REFERENCE, image_config

    tag = values["image"]["tag"] or chart["appVersion"]
    assert f"docker.io/{values['image']['repository']}:{tag}" == REFERENCE
    config = image_config()["config"]
    assert config["Env"] == [f"PATH={PATH}"]
    search = PATH.split(":")
    # Where the image's packages put the chart's commands: pycri in the venv (pip's console script, the
    # project's [project.scripts]), python3 from Debian's python3 package.
    installed = {"pycri": f"{PREFIX}/bin", "python3": "/usr/bin"}
    pyproject = (CHART.parents[1] / "pyproject.toml").read_text()
    assert 'pycri = "cri.cli:main"' in pyproject and "python3" in PACKAGES
    daemon, check = None, None
    for command in _rendered_commands(values):
        assert installed[command[0]] in search, f"{command[0]} is not on the image's PATH"
        if command[:2] == ["pycri", "daemon"]:
            daemon = command
        if command[:2] == ["pycri", "check"]:
            check = command
    assert daemon and check
    # Run without a command, the image does what the chart's daemon container does.
    assert [config["Entrypoint"][0].rsplit("/", 1)[1], *config["Cmd"]] == daemon
    assert config["Entrypoint"][0] == f"{installed['pycri']}/pycri"
