"""`pycri ps`, `pycri pods`, `pycri inspect ID` and `pycri timeline [POD]`: read the running daemon through
its admin socket (root only)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def admin_socket(args) -> Path:
    from cri.cli import _config_from

    return _config_from(args).admin_socket_path


def ask(args, op: str, **kwargs) -> Any:
    """One admin request; a clear message and exit status 1 when no daemon answers or it refuses."""
    from cri.admin.client import AdminError, NotRunning, request

    try:
        return request(admin_socket(args), op, **kwargs)
    except NotRunning as exc:
        raise SystemExit(f"pycri {args.command}: {exc}; start it with `pycri daemon`") from None
    except AdminError as exc:
        raise SystemExit(f"pycri {args.command}: {exc}") from None


def _age(ns: int) -> str:
    seconds = max(0, time.time() - ns / 1e9)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def cmd_ps(args) -> int:
    rows = ask(args, "containers")
    print(f"{'CONTAINER':13} {'NAME':24} {'STATE':8} {'AGE':>5} {'POD':13} IMAGE")
    for c in sorted(rows, key=lambda c: c["created_at"]):
        print(f"{c['id'][:13]} {c['name'][:24]:24} {c['state']:8} {_age(c['created_at']):>5} "
              f"{c['pod_sandbox_id'][:13]} {c['image']}")
    return 0


def cmd_pods(args) -> int:
    rows = ask(args, "pods")
    print(f"{'POD':13} {'NAMESPACE/NAME':40} {'STATE':9} {'AGE':>5} {'HANDLER':8} IP")
    for p in rows:
        print(f"{p['id'][:13]} {(p['namespace'] + '/' + p['name'])[:40]:40} {p['state']:9} {_age(p['created_at']):>5} "
              f"{p['runtime_handler'] or '-':8} {','.join(p['ips']) or '-'}")
    return 0


def cmd_inspect(args) -> int:
    json.dump(ask(args, "inspect", id=args.id), sys.stdout, indent=2, sort_keys=True)
    print()
    return 0


def cmd_timeline(args) -> int:
    from cri.observe.timeline import render_svg, render_table

    pods = ask(args, "timeline", pod=args.pod or "")
    if not pods:
        print(f"pycri timeline: no pod start recorded{' for ' + args.pod if args.pod else ''} since the daemon "
              "started", file=sys.stderr)
        return 1
    if args.svg:
        Path(args.svg).write_text(render_svg(pods))
        print(f"wrote {args.svg}: {len(pods)} pod(s)")
    else:
        print(render_table(pods))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from cri.cli import _add_config_flags

    for name, fn, help_text in (("ps", cmd_ps, "list the running daemon's containers"),
                                ("pods", cmd_pods, "list the running daemon's pod sandboxes")):
        p = sub.add_parser(name, help=help_text)
        _add_config_flags(p)
        p.set_defaults(func=fn)
    p = sub.add_parser("inspect", help="print a container, pod or image of the running daemon as JSON")
    p.add_argument("id", help="id or unique id prefix (an image also by name)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_inspect)
    p = sub.add_parser("timeline", help="where each pod's start time went, phase by phase")
    p.add_argument("pod", nargs="?", help="pod id prefix, name or namespace/name (default: every recorded pod)")
    p.add_argument("--svg", metavar="FILE", help="draw a Gantt chart into FILE instead of printing a table")
    _add_config_flags(p)
    p.set_defaults(func=cmd_timeline)
