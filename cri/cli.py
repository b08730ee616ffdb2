"""The `pycri` command: the daemon, its effective configuration, a host check, the version."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cri.config import ConfigError, load_config, to_toml


def _config_from(args: argparse.Namespace):
    overrides = {}
    for flag, key in (("root", "root"), ("state_dir", "state_dir"), ("listen", "listen"),
                      ("log_level", "log_level")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    return load_config(args.config, overrides)


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="configuration file (default /etc/pycri/pycri.conf)")
    p.add_argument("--root", help="persistent state: images, records (default /var/lib/pycri)")
    p.add_argument("--state-dir", dest="state_dir", help="runtime state cleared at reboot (default /run/pycri)")
    p.add_argument("--listen", help="CRI socket, unix:///PATH (default unix:///run/pycri/pycri.sock)")
    p.add_argument("--log-level", dest="log_level", choices=["debug", "info", "warning", "error"])


def cmd_daemon(args) -> int:
    from cri.daemon import run

    return run(_config_from(args), lambda: _config_from(args))


def cmd_config(args) -> int:
    sys.stdout.write(to_toml(_config_from(args)))
    return 0


def cmd_check(args) -> int:
    from cri.check import report

    return report(_config_from(args))


def cmd_version(args) -> int:
    from cri.server.runtime_version import PYCRI_VERSION

    print(f"pycri {PYCRI_VERSION} (CRI v1)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pycri", description="A Kubernetes CRI runtime in Python")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_text in (
        ("daemon", cmd_daemon, "run the CRI server in the foreground"),
        ("config", cmd_config, "print the effective configuration as TOML"),
        ("check", cmd_check, "check the host's prerequisites"),
    ):
        p = sub.add_parser(name, help=help_text)
        _add_config_flags(p)
        p.set_defaults(func=fn)
    sub.add_parser("version", help="print the version").set_defaults(func=cmd_version)
    from cri.image_cli import register as register_image_commands

    register_image_commands(sub)
    from cri.admin_cli import register as register_admin_commands

    register_admin_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"pycri: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
