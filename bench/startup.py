#!/usr/bin/env python3
"""How long the daemon takes to serve CRI after it is started, and to stop: what kubelet (and every
integration test) waits for.

    bench/startup.py [-n 5] [--cgroup-manager cgroupfs|systemd|auto] [--imports] [--profile FILE]

Each round starts `python -m cri daemon` in a fresh temporary root (conformance/daemon.py) and reports the
time to its first answered RPC (Version), and from SIGTERM to its exit. `--imports` runs one more
start with `-X importtime` and prints the modules that cost most (self time) and the total; `--profile`
runs one under cProfile and writes its stats to FILE (the daemon's whole life: start, then stop).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cri.api.v1 import api_pb2  # noqa: E402

from conformance.daemon import Daemon  # noqa: E402


class ProfiledDaemon(Daemon):
    def __init__(self, settings: dict, profile: Path):
        super().__init__(settings)
        self.profile = profile

    def command(self) -> list[str]:
        return [sys.executable, "-m", "cProfile", "-o", str(self.profile), *super().command()[1:]]


def one_start(settings: dict, env: dict | None = None, daemon: Daemon | None = None) -> tuple[dict, Daemon]:
    d = daemon or Daemon(settings)
    started = time.monotonic()
    try:
        d.start(timeout=600, env=env)
        d.runtime.Version(api_pb2.VersionRequest(), timeout=600)
        served = time.monotonic()
        d.stop(timeout=120)
        stopped = time.monotonic()
    except BaseException:
        d.cleanup()
        raise
    return {"serving": served - started, "stop": stopped - served}, d


def import_costs(text: str, top: int) -> str:
    rows = []
    for line in text.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = (part.strip() for part in line[len("import time:"):].split("|"))
        rows.append((int(self_us), int(cumulative_us), name.strip()))
    total = sum(r[0] for r in rows)
    lines = [f"imports: {len(rows)} modules, {total / 1e6:.2f} s in all (self times summed); most costly:"]
    lines += [f"  {s / 1e3:8.1f} ms self {c / 1e3:8.1f} ms cumulative  {n}" for s, c, n in sorted(rows)[-top:][::-1]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5)
    parser.add_argument("--cgroup-manager", default="cgroupfs")
    parser.add_argument("--imports", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--profile", type=Path)
    opts = parser.parse_args()
    settings = {"runtime": {"cgroup_manager": opts.cgroup_manager}}
    rounds = []
    for i in range(opts.n):
        figures, d = one_start(settings)
        rounds.append(figures)
        print(f"round {i + 1}: serving after {figures['serving']:.2f} s, stopped {figures['stop']:.2f} s later",
              flush=True)
        if i == opts.n - 1:
            print("daemon log of the last round:\n" + d.log_tail(40))
        d.cleanup()
    for key in ("serving", "stop"):
        values = [r[key] for r in rounds]
        print(f"{key}: median {statistics.median(values):.2f} s, min {min(values):.2f}, max {max(values):.2f}")
    if opts.imports:
        _, d = one_start(settings, env={"PYTHONPROFILEIMPORTTIME": "1"})
        print(import_costs(d.log_path.read_text(errors="replace"), opts.top))
        d.cleanup()
    if opts.profile:
        _, d = one_start(settings, daemon=ProfiledDaemon(settings, opts.profile.resolve()))
        d.cleanup()
        print(f"cProfile stats of one daemon's life: {opts.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
