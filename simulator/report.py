"""``summary.json`` and ``report.html`` of a simulation run.

The summary is the machine-readable record: the scenario, the seed, the shortcuts that
were on, counters, per device its profile, final release and events, per rollout its
status, per-wave timings and outcomes, gate values and judgements, and whether the
scenario's expected outcome counts were met. The report is one self-contained HTML file
(inline SVG, no script, no network) with the plots an operator reads first: rollout
progress over time per wave, p95 latency and top-1 confidence per release over time, and
rollbacks over time.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

from .recorder import FINAL_EVENTS, RolloutTimeline
from .run import RunResult

__all__ = ["build_summary", "write_report"]

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]


def build_summary(result: RunResult) -> dict[str, Any]:
    recorder = result.recorder
    devices = []
    for device in result.devices:
        daemon = device.daemon
        current = None
        if daemon is not None:
            refs = [state.active for state in daemon.models.model_states() if state.active]
            current = ", ".join(f"{ref.model}:{ref.version}" for ref in refs) or None
        devices.append(
            {
                "device_id": device.device_id,
                "profile": device.plan.profile.name,
                "final_release": current,
                "kills": device.kills,
                "planned_faults": {
                    "kills": {str(k): v for k, v in device.plan.kills.items()},
                    "corrupt_artifacts": device.plan.corrupt_artifacts,
                },
                "requests": device.requests,
                "events": [
                    {
                        "t_s": round(e.t_s, 2),
                        "type": e.type,
                        "release": e.release,
                        "reason": e.reason,
                    }
                    for e in recorder.events.get(device.device_id, [])
                ],
            }
        )
    return {
        "scenario": result.scenario.name,
        "seed": result.plan.seed,
        "run_tag": result.plan.run_tag,
        "devices_count": len(result.devices),
        "setup_s": round(result.setup_s, 2),
        "shortcuts": result.shortcuts.names(),
        "counters": result.counters,
        "final_releases": dict(Counter(d["final_release"] or "none" for d in devices)),
        "rollouts": [
            _rollout_summary(t, recorder.outcome_counts(t.release)) for t in recorder.rollouts
        ],
        "expectations_met": result.ok,
        "expectation_failures": result.expectation_failures,
        "telemetry": recorder.telemetry_series(),
        "devices": devices,
    }


def _rollout_summary(timeline: RolloutTimeline, outcomes: Counter[str]) -> dict[str, Any]:
    final = timeline.final or {}
    waves = []
    for wave in final.get("waves", []):
        index = wave["wave"]
        started = _first_time(
            timeline, lambda s, i=index: s["wave"] >= i and s["status"] != "pending"
        )
        waves.append(
            {
                "wave": index,
                "size": wave["size"],
                "target": wave["target"],
                "outcomes": wave["outcomes"],
                "started_s": _relative(started, timeline),
                # A wave an abort kept from starting never settled.
                "settled_s": None
                if started is None
                else _relative(
                    _first_time(
                        timeline,
                        lambda s, i=index: s["wave"] > i or s["status"] in ("completed", "aborted"),
                    ),
                    timeline,
                ),
            }
        )
    return {
        "index": timeline.index,
        "rollout_id": timeline.rollout_id,
        "release": timeline.release,
        "status": final.get("status"),
        # Seconds from the start of the run: rollouts started together overlap.
        "started_s": round(timeline.started_s, 2),
        "duration_s": round(timeline.samples[-1]["t_s"] - timeline.started_s, 2)
        if timeline.samples
        else None,
        "device_outcomes": {name: outcomes.get(name, 0) for name in FINAL_EVENTS},
        "waves": waves,
        "gates": final.get("gates"),
        "judgements": final.get("judgements"),
        "notes": final.get("notes"),
    }


def _first_time(timeline: RolloutTimeline, predicate: Any) -> float | None:
    for sample in timeline.samples:
        if predicate(sample):
            return float(sample["t_s"])
    return None


def _relative(t_s: float | None, timeline: RolloutTimeline) -> float | None:
    return None if t_s is None else round(t_s - timeline.started_s, 2)


def write_report(result: RunResult, directory: Path) -> dict[str, Any]:
    """Write ``summary.json`` and ``report.html`` into ``directory``; return the summary."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = build_summary(result)
    (directory / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (directory / "report.html").write_text(_html(summary, result))
    return summary


# -- HTML ---------------------------------------------------------------------------------


def _html(summary: dict[str, Any], result: RunResult) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>edgefleet simulation: {esc(summary['scenario'])}</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
        "th{background:#f3f3f3}.bad{color:#b00}.ok{color:#070}svg{background:#fafafa;"
        "border:1px solid #ddd;margin:.5em 0}</style></head><body>",
        f"<h1>Simulation: {esc(summary['scenario'])}</h1>",
        f"<p>{summary['devices_count']} devices, seed {summary['seed']}, run "
        f"<code>{esc(summary['run_tag'])}</code>. Expected outcomes: "
        + (
            "<b class='ok'>met</b>"
            if summary["expectations_met"]
            else "<b class='bad'>NOT met</b>: " + esc("; ".join(summary["expectation_failures"]))
        )
        + "</p>",
        "<h2>Rollouts</h2>",
    ]
    for rollout in summary["rollouts"]:
        parts.append(
            f"<h3>{rollout['index'] + 1}. {esc(rollout['release'])}: {esc(str(rollout['status']))}"
            f" in {rollout['duration_s']} s</h3>"
        )
        parts.append(
            _table(
                ["committed", "rolled back", "failed"],
                [[rollout["device_outcomes"][k] for k in FINAL_EVENTS]],
            )
        )
        parts.append(
            _table(
                ["wave", "size", "target", "started (s)", "settled (s)", "outcomes"],
                [
                    [
                        w["wave"],
                        w["size"],
                        w["target"],
                        w["started_s"],
                        w["settled_s"],
                        ", ".join(f"{k} {v}" for k, v in w["outcomes"].items()),
                    ]
                    for w in rollout["waves"]
                ],
            )
        )
        if rollout["gates"]:
            parts.append(
                _table(
                    ["gate", "value", "threshold", "passed", "note"],
                    [
                        [
                            g.get("name"),
                            g.get("value"),
                            g.get("threshold"),
                            g.get("passed"),
                            g.get("note"),
                        ]
                        for g in rollout["gates"]
                    ],
                )
            )
        if rollout["notes"]:
            parts.append(f"<p>Notes: {esc(str(rollout['notes']))}</p>")
        timeline = result.recorder.rollouts[rollout["index"]]
        parts.append(_progress_plot(timeline))
    series = summary["telemetry"]
    parts.append("<h2>Latency and confidence, per release</h2>")
    span = (0.0, max(result.recorder.now_s(), 1.0))
    parts.append(_release_plot(series, "p95_ms", "p95 latency (ms), request-weighted", span))
    parts.append(_release_plot(series, "confidence", "top-1 confidence, mean", span))
    parts.append("<h2>Rollbacks</h2>")
    parts.append(_rollback_plot(result, span))
    parts.append("<h2>Final releases</h2>")
    parts.append(_table(["release", "devices"], sorted(summary["final_releases"].items())))
    parts.append("<h2>Shortcuts that were on</h2><ul>")
    parts += [f"<li>{esc(text)}</li>" for text in summary["shortcuts"]]
    parts.append("</ul><h2>Counters</h2>")
    parts.append(_table(["counter", "value"], sorted(summary["counters"].items())))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(header: list[str], rows: list[Any]) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg_lines(
    title: str,
    lines: dict[str, list[tuple[float, float]]],
    *,
    y_label: str,
    x_range: tuple[float, float] | None = None,
) -> str:
    """A line per series, with a dot on every point (a series may have one point)."""
    width, height, pad = 900, 260, 45
    points = [p for line in lines.values() for p in line]
    if not points:
        return f"<p>{html.escape(title)}: no data.</p>"
    x_min, x_max = x_range or (min(p[0] for p in points), max(p[0] for p in points))
    y_max = max(p[1] for p in points) or 1.0
    span = (x_max - x_min) or 1.0

    def x(v: float) -> float:
        return pad + (v - x_min) / span * (width - 2 * pad)

    def y(v: float) -> float:
        return height - pad - v / y_max * (height - 2 * pad)

    svg = [
        f"<svg width='{width}' height='{height}' role='img' aria-label='{html.escape(title)}'>",
        f"<text x='{pad}' y='18' font-weight='bold'>{html.escape(title)}</text>",
        f"<line x1='{pad}' y1='{height - pad}' x2='{width - pad}' y2='{height - pad}' "
        "stroke='#888'/>",
        f"<line x1='{pad}' y1='{pad}' x2='{pad}' y2='{height - pad}' stroke='#888'/>",
        f"<text x='{pad}' y='{height - 12}'>{x_min:.0f} s</text>",
        f"<text x='{width - pad - 40}' y='{height - 12}'>{x_max:.0f} s</text>",
        f"<text x='4' y='{pad}'>{y_max:.3g}</text>",
        f"<text x='4' y='{height - pad}'>0</text>",
        f"<text x='{width / 2 - 40}' y='{height - 12}'>{html.escape(y_label)}</text>",
    ]
    for index, (name, line) in enumerate(sorted(lines.items())):
        color = COLORS[index % len(COLORS)]
        coords = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in line)
        svg += [f"<circle cx='{x(a):.1f}' cy='{y(b):.1f}' r='3' fill='{color}'/>" for a, b in line]
        svg.append(f"<polyline fill='none' stroke='{color}' stroke-width='2' points='{coords}'/>")
        svg.append(
            f"<text x='{width - pad - 200}' y='{30 + 16 * index}' fill='{color}'>"
            f"{html.escape(name)}</text>"
        )
    svg.append("</svg>")
    return "".join(svg)


def _progress_plot(timeline: RolloutTimeline) -> str:
    lines: dict[str, list[tuple[float, float]]] = {}
    for sample in timeline.samples:
        t = sample["t_s"] - timeline.started_s
        for wave in sample["waves"]:
            done = sum(
                v for k, v in wave.items() if k in FINAL_EVENTS or k == "committed_unobserved"
            )
            lines.setdefault(f"wave {wave['wave']} (target {wave['target']})", []).append((t, done))
    return _svg_lines(
        f"Rollout {timeline.index + 1} ({timeline.release}): devices settled per wave",
        lines,
        y_label="seconds since the rollout started",
    )


def _release_plot(
    series: list[dict[str, Any]], key: str, title: str, span: tuple[float, float]
) -> str:
    lines: dict[str, list[tuple[float, float]]] = {}
    for point in series:
        if point[key] is not None:
            lines.setdefault(point["release"], []).append((point["t_s"], float(point[key])))
    return _svg_lines(title, lines, y_label="seconds since the simulation started", x_range=span)


def _rollback_plot(result: RunResult, span: tuple[float, float]) -> str:
    times = sorted(
        event.t_s
        for events in result.recorder.events.values()
        for event in events
        if event.type == "rolled_back"
    )
    if not times:
        return "<p>No device rolled back.</p>"
    line = [(t, float(n + 1)) for n, t in enumerate(times)]
    return _svg_lines(
        "Devices rolled back (cumulative)",
        {"rolled back": line},
        y_label="seconds since the simulation started",
        x_range=span,
    )
