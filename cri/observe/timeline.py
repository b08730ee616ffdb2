"""The pod start timeline: where each pod's start time went, phase by phase, kept for the last pods in a
bounded in-memory ring (served over the admin socket), and drawn as a table or an SVG Gantt chart."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Iterable

MAX_PODS = 256
MAX_PHASES_PER_POD = 256

# Phase name -> bar colour; the order is the legend's.
COLOURS = {
    "namespaces": "#4e79a7", "cni_add": "#f28e2b", "sandbox_files": "#76b7b2", "infra": "#59a14f",
    "pull": "#e15759", "download": "#ff9da7", "unpack": "#edc948", "rootfs": "#b07aa1", "spec": "#9c755f",
    "conmon": "#bab0ac", "runtime_create": "#17becf", "start": "#2ca02c", "cni_del": "#8c564b",
}
OTHER_COLOUR = "#7f7f7f"


class Timeline:
    """Phases by pod id, oldest pod dropped first; thread-safe (storage threads report pull phases)."""

    def __init__(self, max_pods: int = MAX_PODS, max_phases: int = MAX_PHASES_PER_POD) -> None:
        self._pods: OrderedDict[str, dict] = OrderedDict()
        self._max_pods, self._max_phases = max_pods, max_phases
        self._lock = threading.Lock()

    def _pod(self, pod: str) -> dict:
        entry = self._pods.get(pod)
        if entry is None:
            entry = self._pods[pod] = {"id": pod, "name": "", "phases": []}
            while len(self._pods) > self._max_pods:
                self._pods.popitem(last=False)
        return entry

    def name(self, pod: str, name: str) -> None:
        with self._lock:
            self._pod(pod)["name"] = name

    def add(self, pod: str, subject: str, phase: str, start: float, end: float, failed: bool = False) -> None:
        with self._lock:
            phases = self._pod(pod)["phases"]
            if len(phases) < self._max_phases:
                phases.append({"subject": subject, "phase": phase, "start": start, "end": end, "failed": failed})

    def snapshot(self, ref: str = "") -> list[dict]:
        """Pods whose id starts with `ref` or whose namespace/name or name is `ref`, oldest first."""
        with self._lock:
            pods = [{**p, "phases": list(p["phases"])} for p in self._pods.values()]
        if ref:
            pods = [p for p in pods if p["id"].startswith(ref) or ref in (p["name"], p["name"].split("/")[-1])]
        return [p for p in pods if p["phases"]]


def _rows(pod: dict) -> list[tuple[str, str, float, float, bool]]:
    """(subject, phase, start offset, duration, failed) in start order, offsets from the pod's first phase."""
    phases = sorted(pod["phases"], key=lambda p: (p["start"], p["end"]))
    origin = phases[0]["start"]
    return [(p["subject"], p["phase"], p["start"] - origin, p["end"] - p["start"], p["failed"]) for p in phases]


def _short(subject: str, width: int) -> str:
    """Long image names keep their end (repository and tag), which tells them apart."""
    return subject if len(subject) <= width else "…" + subject[-(width - 1):]


def _span(pod: dict) -> float:
    return max(p["end"] for p in pod["phases"]) - min(p["start"] for p in pod["phases"])


def render_table(pods: Iterable[dict]) -> str:
    out = []
    for pod in pods:
        started = time.strftime("%H:%M:%S", time.localtime(min(p["start"] for p in pod["phases"])))
        out.append(f"POD {pod['name'] or '?'} {pod['id'][:13]} started {started}, "
                   f"{_span(pod) * 1000:.1f} ms from first to last phase")
        out.append(f"  {'SUBJECT':32} {'PHASE':16} {'AT ms':>9} {'TOOK ms':>9}")
        for subject, phase, at, took, failed in _rows(pod):
            out.append(f"  {_short(subject, 32):32} {phase:16} {at * 1000:9.1f} {took * 1000:9.1f}"
                       + ("  FAILED" if failed else ""))
        out.append("")
    return "\n".join(out)


ROW_H, LABEL_W, CHART_W, PAD, HEADER_H = 18, 300, 640, 12, 24
MIN_BAR_W = 4.0  # px: a phase of 2 ms in a start of 2 s is still a visible bar (14 px high: >= 56 px drawn)


def render_svg(pods: list[dict]) -> str:
    """A Gantt chart: per pod a header and one bar per phase, on a millisecond axis of its own."""
    import html  # here, in `pycri timeline --svg`: the daemon never renders, and html's entity table is 0.3 MB

    parts: list[str] = []
    y = PAD
    for pod in pods:
        rows = _rows(pod)
        total = max(_span(pod), 1e-6)
        scale = CHART_W / total
        parts.append(f'<text x="{PAD}" y="{y + 16}" font-weight="bold">{html.escape(pod["name"] or "?")} '
                     f'({pod["id"][:12]}): {total * 1000:.1f} ms</text>')
        y += HEADER_H
        for tick in range(5):
            x = PAD + LABEL_W + CHART_W * tick / 4
            parts.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + len(rows) * ROW_H}" stroke="#ddd"/>')
            parts.append(f'<text x="{x:.1f}" y="{y + len(rows) * ROW_H + 12}" font-size="10" '
                         f'text-anchor="middle">{total * 1000 * tick / 4:.0f} ms</text>')
        for subject, phase, at, took, failed in rows:
            colour = COLOURS.get(phase, OTHER_COLOUR)
            width = max(took * scale, MIN_BAR_W)
            parts.append(f'<text x="{PAD}" y="{y + 13}" font-size="11">{html.escape(_short(subject, 34))} · '
                         f'{html.escape(phase)}</text>')
            parts.append(f'<rect class="bar" x="{PAD + LABEL_W + at * scale:.1f}" y="{y + 2}" width="{width:.1f}" '
                         f'height="{ROW_H - 4}" fill="{colour}"'
                         + (' stroke="#d00" stroke-width="2"' if failed else "")
                         + f'><title>{html.escape(phase)}: {took * 1000:.1f} ms</title></rect>')
            y += ROW_H
        y += PAD + 16
    if not pods:
        parts.append(f'<text x="{PAD}" y="{y + 16}">no pod start recorded yet</text>')
        y += HEADER_H
    width = PAD * 2 + LABEL_W + CHART_W + 30  # room for the last tick label
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" viewBox="0 0 {width} {y}" '
            f'font-family="sans-serif" font-size="12">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(parts) + "\n</svg>\n")
