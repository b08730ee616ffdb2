#!/usr/bin/env python3
"""Medians of `critest -benchmark` runs, pooled per runtime, and the ratio of each to the first runtime.

    bench/critest_ratios.py pycri=RUN_DATA_DIR[,RUN_DATA_DIR...] containerd=RUN_DATA_DIR[,...] [...]

Each RUN_DATA_DIR is the `<name>-data` directory the critest kit's `MODE=benchmark run-critest.sh` writes
(container_, pod_, image_lifecycle_ and image_listing_benchmark_data.json). Samples of every run of a runtime
are pooled, so alternating runs (pycri, containerd, pycri, containerd) give one median per operation each.
Prints a Markdown table: operation, samples, the median in ms per runtime, then first/other for each other one
and, with two or more others, first/better: over the fastest of them, per operation (issue 14's anchor). The sums
create + start and stop + remove (what kubelet waits for, back to back) are rows of their own.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

FILES = ("pod", "container", "image_lifecycle", "image_listing")
SUMS = {"create + start": ("CreateContainer", "StartContainer"), "stop + remove": ("StopContainer", "RemoveContainer")}
RENAME = {"StatusContainer": "ContainerStatus", "CreatePod": "RunPodSandbox", "StatusPod": "PodSandboxStatus",
          "StopPod": "StopPodSandbox", "RemovePod": "RemovePodSandbox", "StatusImage": "ImageStatus"}


def samples(dirs: list[Path]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for d in dirs:
        for name in FILES:
            path = d / f"{name}_benchmark_data.json"
            if not path.exists():
                continue
            doc = json.loads(path.read_text())
            ops = [RENAME.get(op, op) for op in doc["operationsNames"]]
            for point in doc.get("datapoints") or []:
                for op, ns in zip(ops, point["operationsDurationsNs"], strict=False):
                    if ns > 0:
                        out.setdefault(op, []).append(ns / 1e6)
    return out


def main() -> int:
    runtimes = []
    for arg in sys.argv[1:]:
        label, _, dirs = arg.partition("=")
        runtimes.append((label, samples([Path(d) for d in dirs.split(",")])))
    if len(runtimes) < 2:
        raise SystemExit(__doc__)
    (first, ours), others = runtimes[0], runtimes[1:]
    medians = [{op: statistics.median(v) for op, v in data.items()} for _, data in runtimes]
    for m in medians:
        for total, parts in SUMS.items():
            if all(p in m for p in parts):
                m[total] = sum(m[p] for p in parts)
    ratio_heads = [f"{first}/{label}" for label, _ in others] + ([f"{first}/better"] if len(others) > 1 else [])
    print("| operation | samples | " + " | ".join(label for label, _ in runtimes) + " | "
          + " | ".join(ratio_heads) + " |")
    print("| --- |" + " ---: |" * (1 + len(runtimes) + len(ratio_heads)))
    for op in [*ours, *SUMS]:
        if op not in medians[0]:
            continue
        cells = [f"{m[op]:.2f}" if op in m else "" for m in medians]
        ratios = [f"{medians[0][op] / m[op]:.2f}" if m.get(op) else "" for m in medians[1:]]
        if len(others) > 1:
            anchors = [m[op] for m in medians[1:] if m.get(op)]
            ratios.append(f"{medians[0][op] / min(anchors):.2f}" if anchors else "")
        print(f"| {op} | {len(ours[op]) if op in ours else ''} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
