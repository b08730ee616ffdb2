"""The --compare option every bench script shares: several reference runtimes, each with a label.

    --compare containerd=unix:///run/containerd/containerd.sock --compare crio=unix:///var/run/crio/crio.sock

A value without a label is labelled by its socket's file name (``containerd``, ``crio``). An endpoint whose
socket does not exist is skipped with a note, so one command line serves a machine with either runtime.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_compare_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--compare", action="append", default=[], metavar="[LABEL=]ENDPOINT",
                    help="another runtime to measure side by side (repeatable), e.g. "
                         "containerd=unix:///run/containerd/containerd.sock or crio=unix:///var/run/crio/crio.sock")


def parse_compare(values: list[str]) -> list[tuple[str, str]]:
    """(label, endpoint) of every reference runtime whose socket exists."""
    out: list[tuple[str, str]] = []
    for value in values:
        label, sep, endpoint = value.partition("=")
        if not sep:
            endpoint = value
            label = os.path.basename(value.removeprefix("unix://")).removesuffix(".sock") or "reference"
        if endpoint.startswith("unix://") and not os.path.exists(endpoint.removeprefix("unix://")):
            print(f"{label}: {endpoint} is not there; not measured", file=sys.stderr)
            continue
        if any(label == seen for seen, _ in out):
            raise SystemExit(f"--compare: label {label!r} given twice")
        out.append((label, endpoint))
    return out
