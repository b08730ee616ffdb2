"""Configuration: pydantic models, TOML loading with drop-ins, environment and flag overrides.

Precedence, lowest first: built-in defaults, the main file (/etc/pycri/pycri.conf), drop-ins
(/etc/pycri/pycri.conf.d/*.conf in lexical order), PYCRI_* environment variables, CLI flags.
Unknown keys and bad values fail at start naming the file and the key, like `crio` does.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_FILE = Path("/etc/pycri/pycri.conf")
ENV_PREFIX = "PYCRI_"

# The capabilities CRI-O grants a container by default: enough for ordinary images, without
# NET_RAW, SYS_CHROOT, MKNOD or AUDIT_WRITE that docker used to hand out.
DEFAULT_CAPABILITIES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "KILL",
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class StorageConfig(Section):
    registries_conf: Path = Path("/etc/containers/registries.conf")
    registries_conf_dir: Path = Path("/etc/containers/registries.conf.d")
    auth_file: Path | None = None
    pull_progress_timeout: float = Field(60.0, gt=0, description="abort a pull after this many seconds without a byte")
    max_parallel_downloads: int = Field(3, ge=1, le=32)
    durable_pulls: bool = Field(True, description="flush a pulled image to disk before PullImage returns, so it "
                                "survives a power loss (one syncfs per pull)")
    max_import_bytes: int = Field(64 << 30, ge=1, description="the largest archive `pycri image import` may send "
                                  "to a running daemon (spooled under root first)")
    pinned_images: list[str] = Field([], description="images kubelet's image GC must keep: exact names or ids, "
                                     "'prefix*' globs, '*keyword*'")

    @field_validator("pinned_images")
    @classmethod
    def _pinned_patterns(cls, v: list[str]) -> list[str]:
        from storage.errors import InvalidReference
        from storage.pinned import parse_pattern
        for pattern in v:
            try:
                parse_pattern(pattern)
            except InvalidReference as exc:
                raise ValueError(str(exc)) from None
        return v


class NetworkConfig(Section):
    cni_conf_dir: Path = Path("/etc/cni/net.d")
    cni_plugin_dirs: list[Path] = [Path("/opt/cni/bin"), Path("/usr/lib/cni")]
    cni_timeout: float = Field(60.0, gt=0)


class RuntimeHandler(Section):
    path: str = Field(description="binary path, or a name looked up on PATH")
    runtime_root: Path | None = Field(None, description="the runtime's --root; default <state_dir>/<handler>")
    monitor: Literal["conmon"] = "conmon"


# The handler pods without a RuntimeClass get when the configuration names none: crun when it is installed, as
# CRI-O's packages ship it (its `create` is a C program's, not a Go one's that re-executes itself), else runc.
AUTO_DEFAULT_RUNTIMES = ("crun", "runc")


class RuntimeConfig(Section):
    default_runtime: str = Field("", description="'' = crun when its binary is found, else runc")
    handlers: dict[str, RuntimeHandler] = {
        "runc": RuntimeHandler(path="runc"),
        "crun": RuntimeHandler(path="crun"),
    }
    conmon: str = "conmon"
    cgroup_manager: Literal["auto", "cgroupfs", "systemd"] = Field(
        "auto", description="auto = systemd when it is PID 1 (/run/systemd/system exists), else cgroupfs")
    default_capabilities: list[str] = DEFAULT_CAPABILITIES
    seccomp_profile: Path | None = Field(None, description="RuntimeDefault profile; built-in when unset")
    pids_limit: int = Field(0, ge=0, description="0 = no limit unless the pod asks")
    log_size_max: int = Field(-1, description="bytes per container log file; -1 = unlimited")
    stop_timeout_min: int = Field(0, ge=0)
    cdi_spec_dirs: list[Path] = Field([Path("/etc/cdi"), Path("/var/run/cdi")],
                                      description="CDI spec files; a later directory overrides an earlier one")

    @model_validator(mode="after")
    def _default_is_a_handler(self) -> "RuntimeConfig":
        if not self.default_runtime:
            self.default_runtime = auto_default_runtime(self.handlers)  # runs this validator again, with a name
        elif self.default_runtime not in self.handlers:
            raise ValueError(f"default_runtime {self.default_runtime!r} is not in [runtime.handlers]")
        return self

    @field_validator("default_capabilities")
    @classmethod
    def _caps_upper(cls, v: list[str]) -> list[str]:
        return [c.upper().removeprefix("CAP_") for c in v]


class StreamingConfig(Section):
    address: str = "127.0.0.1"
    port: int = Field(0, ge=0, le=65535, description="0 = a free port")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    idle_timeout: float = Field(4 * 3600, gt=0)
    stream_creation_timeout: float = Field(30.0, gt=0)


class MetricsConfig(Section):
    enable: bool = Field(True, description="serve Prometheus metrics at http://address:port/metrics")
    address: str = "127.0.0.1"
    port: int = Field(9090, ge=0, le=65535, description="0 = a free port (logged)")


class TracingConfig(Section):
    enable: bool = Field(False, description="send OpenTelemetry spans over OTLP/gRPC")
    endpoint: str = Field("127.0.0.1:4317", description="the OTLP/gRPC collector, host:port")
    sampling_rate_per_million: int = Field(1_000_000, ge=0, le=1_000_000,
                                           description="traces kept per million started here; a caller's "
                                           "sampled flag wins")


class Config(Section):
    root: Path = Path("/var/lib/pycri")
    state_dir: Path = Path("/run/pycri")
    listen: str = "unix:///run/pycri/pycri.sock"
    socket_mode: int = 0o660
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    log_target: Literal["auto", "stderr", "journal"] = Field(
        "auto", description="auto = the systemd journal (native protocol, structured fields) when systemd "
        "connected stderr to it (JOURNAL_STREAM), else stderr")
    journal_socket: Path = Path("/run/systemd/journal/socket")
    storage: StorageConfig = StorageConfig()
    network: NetworkConfig = NetworkConfig()
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)  # built per Config: its default looks at PATH
    streaming: StreamingConfig = StreamingConfig()
    metrics: MetricsConfig = MetricsConfig()
    tracing: TracingConfig = TracingConfig()

    @field_validator("listen")
    @classmethod
    def _unix_only(cls, v: str) -> str:
        if not v.startswith("unix://") or not v.removeprefix("unix://").startswith("/"):
            raise ValueError("must be unix:///absolute/path")
        return v

    @property
    def socket_path(self) -> Path:
        return Path(self.listen.removeprefix("unix://"))

    @property
    def admin_socket_path(self) -> Path:
        """The root-only admin socket beside the CRI socket: pycri.sock -> pycri-admin.sock."""
        return self.socket_path.with_name(f"{self.socket_path.stem}-admin.sock")

    def runtime_path(self, handler: str) -> str | None:
        """The handler's binary as an absolute path, or None when it is not installed."""
        h = self.runtime.handlers.get(handler)
        return find_binary(h.path) if h else None


def auto_default_runtime(handlers: dict[str, RuntimeHandler]) -> str:
    """The default handler when the configuration names none: the first of crun, runc that is a handler and whose
    binary is found, else the last of them that is a handler (Status then says its binary is missing)."""
    named = [h for h in AUTO_DEFAULT_RUNTIMES if h in handlers]
    if not named:
        raise ValueError(f"default_runtime is unset and none of {', '.join(AUTO_DEFAULT_RUNTIMES)} is in "
                         f"[runtime.handlers]: set it to one of {sorted(handlers)}")
    return next((h for h in named if find_binary(handlers[h].path) is not None), named[-1])


_found: dict[str, str] = {}


def find_binary(name: str) -> str | None:
    """`shutil.which`, remembered while the file stays executable: Status asks for every handler every few
    seconds, and a PATH search costs more than the rest of the call."""
    found = _found.get(name)
    if found is None or not os.access(found, os.X_OK):
        found = shutil.which(name)
        if found is None:
            _found.pop(name, None)
        else:
            _found[name] = found
    return found


class ConfigError(Exception):
    """A configuration file, variable or flag is wrong; the message names where and what."""


def _deep_merge(base: dict, override: dict, origin: dict, source: str, prefix: tuple = ()) -> None:
    for key, value in override.items():
        path = prefix + (key,)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, origin, source, path)
        else:
            base[key] = value
        origin[path] = source
        if isinstance(value, dict):
            for sub in _leaf_paths(value, path):
                origin[sub] = source


def _leaf_paths(d: dict, prefix: tuple) -> list[tuple]:
    out = []
    for k, v in d.items():
        out.append(prefix + (k,))
        if isinstance(v, dict):
            out.extend(_leaf_paths(v, prefix + (k,)))
    return out


def _parse_env_value(raw: str) -> Any:
    """Read an environment value as a TOML value when it is one, else as a plain string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict:
    """PYCRI_LOG_LEVEL=debug sets log_level; PYCRI_STREAMING__PORT=1234 sets [streaming] port."""
    out: dict = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in ("PYCRI_CONFIG", "PYCRI_CONFIG_DIR"):
            continue
        if name.startswith(ENV_PREFIX + "FAULT"):  # fault injection (cri/faults.py): not configuration
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_env_value(raw)
    return out


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load_config(
    path: Path | None = None,
    overrides: dict | None = None,
    environ: dict[str, str] | None = None,
) -> Config:
    """Build the effective configuration; raise ConfigError naming the file and key at fault."""
    environ = dict(os.environ) if environ is None else environ
    explicit = path is not None or "PYCRI_CONFIG" in environ
    path = Path(path or environ.get("PYCRI_CONFIG") or DEFAULT_CONFIG_FILE)
    merged: dict = {}
    origin: dict[tuple, str] = {}
    if path.exists():
        _deep_merge(merged, _read_toml(path), origin, str(path))
    elif explicit:
        raise ConfigError(f"{path}: configuration file does not exist")
    dropin_dir = Path(environ.get("PYCRI_CONFIG_DIR", str(path) + ".d"))
    if dropin_dir.is_dir():
        for dropin in sorted(dropin_dir.glob("*.conf")):
            _deep_merge(merged, _read_toml(dropin), origin, str(dropin))
    _deep_merge(merged, _env_overrides(environ), origin, "environment")
    _deep_merge(merged, overrides or {}, origin, "command line")
    try:
        return Config.model_validate(merged)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(p) for p in err["loc"])
            source = next((origin[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in origin), "defaults")
            key = ".".join(loc)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{source}: {key}: {msg}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def _toml_value(key: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int) and key.endswith("_mode"):
        return f"0o{v:o}"  # file modes read as octal
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value("", x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def render_toml(data: dict, table: str = "") -> str:
    """Nested dicts of scalars and lists as TOML: keys first, then one [table] per dict."""
    scalars = [f"{k} = {_toml_value(k, v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = (f"\n[{table}]\n" if table and scalars else "") + "".join(line + "\n" for line in scalars)
    for k, v in data.items():
        if isinstance(v, dict):
            out += render_toml(v, f"{table}.{k}" if table else k)
    return out


def to_toml(config: Config) -> str:
    """Render the effective configuration as TOML that load_config reads back unchanged."""
    return "# pycri effective configuration\n" + render_toml(config.model_dump(mode="json", exclude_none=True))
