"""Lineage and provenance as text: the model's version tree, a version's source, a
release's provenance block. Pure: the API's JSON (or a verified ``Provenance``) in, lines
out; the commands print them.

The tree nests derivation (a variant under the version it was made from); succession (a
later upload or import, the model's latest version when it arrived) is a sibling at the
top level saying ``after vN``, so a model with many uploads stays shallow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol import Provenance

__all__ = ["lineage_lines", "lineage_tree_lines", "provenance_lines"]

SUMMARY_ENTRIES = 8
LABEL_WIDTH = 16


def lineage_tree_lines(graph: Mapping[str, Any]) -> list[str]:
    """The model's versions as a tree, oldest first."""
    nodes = {int(n["version"]): n for n in graph.get("nodes", [])}
    derived: dict[int, list[int]] = {}
    after: dict[int, int] = {}
    for edge in graph.get("edges", []):
        if edge["kind"] == "derived":
            derived.setdefault(int(edge["parent"]), []).append(int(edge["child"]))
        else:
            after[int(edge["child"])] = int(edge["parent"])
    children = {v for kids in derived.values() for v in kids}
    roots = sorted(v for v in nodes if v not in children)
    lines = [str(graph.get("model", ""))]
    shown: set[int] = set()

    def walk(version: int, prefix: str, last: bool) -> None:
        if version in shown:  # the rows hold a loop; show each version once
            return
        shown.add(version)
        lines.append(f"{prefix}{'└── ' if last else '├── '}{_node_text(nodes[version], after)}")
        kids = sorted(k for k in derived.get(version, []) if k in nodes)
        for index, kid in enumerate(kids):
            walk(kid, prefix + ("    " if last else "│   "), index == len(kids) - 1)

    for index, root in enumerate(roots):
        walk(root, "", index == len(roots) - 1)
    for version in sorted(set(nodes) - shown):  # unreachable: a loop of variants
        walk(version, "", True)
    return lines


def _node_text(node: Mapping[str, Any], after: Mapping[int, int]) -> str:
    version = int(node["version"])
    if node["origin"] == "variant":
        what = f"{node.get('variant_mode') or '?'} variant"
    else:
        what = node["origin"]
    parts = [f"v{version}", what, node["status"]]
    if node.get("released"):
        parts.append("released")
    if version in after:
        parts.append(f"after v{after[version]}")
    source = node.get("source")
    if source and (node["origin"] != "variant" or node.get("lineage_version") == version):
        parts.append(_source_text(source, node.get("run_id"), node.get("source_uri")))
    return "  ".join(parts)


def _source_text(source: str, run_id: str | None, uri: str | None) -> str:
    text = f"from {source}"
    if uri:
        text += f" {uri}"
    if run_id:
        text += f" (run {run_id[:12]})"
    return text


def lineage_lines(
    lineage: Mapping[str, Any] | None, *, inherited_from: str | None = None
) -> list[str]:
    """A version's recorded lineage: source, run, parameters, metrics and datasets."""
    if not lineage:
        return ["lineage:      none recorded"]
    header = "lineage:" + (f" (inherited from {inherited_from})" if inherited_from else "")
    lines = [header]
    source = str(lineage.get("source") or "?")
    lines.append(
        _field("source", " ".join(filter(None, [source, _str(lineage.get("source_uri"))])))
    )
    if lineage.get("run_id"):
        experiment = _str(lineage.get("experiment"))
        run = str(lineage["run_id"]) + (f" (experiment {experiment})" if experiment else "")
        lines.append(_field("run", run))
    for key in ("params", "metrics"):
        value = lineage.get(key)
        if isinstance(value, Mapping) and value:
            lines.append(_field(key, summarize(value)))
    for dataset in lineage.get("datasets") or []:
        if isinstance(dataset, Mapping):
            lines.append(_field("dataset", _dataset_text(dataset)))
    if lineage.get("mlflow_uri"):
        lines.append(_field("registry", str(lineage["mlflow_uri"])))
    return lines


def provenance_lines(provenance: Provenance | None) -> list[str]:
    """A verified release's provenance, for ``edgefleet doc verify``."""
    if provenance is None:
        return ["provenance:   none (the release was signed without one)"]
    p = provenance
    lines = ["provenance:"]
    lines.append(_field("source", " ".join(filter(None, [p.source, p.source_uri]))))
    if p.run_id:
        lines.append(
            _field("run", p.run_id + (f" (experiment {p.experiment})" if p.experiment else ""))
        )
    if p.params:
        lines.append(_field("params", summarize(p.params)))
    if p.metrics:
        lines.append(_field("metrics", summarize(p.metrics)))
    for dataset in p.datasets:
        lines.append(_field("dataset", _dataset_text(dataset.model_dump())))
    if p.parent is not None:
        lines.append(
            _field(
                "derived from",
                f"{p.parent.model}:{p.parent.version} (sha256 {p.parent.sha256})",
            )
        )
    if p.variant is not None:
        gate = f", gate {summarize(p.variant.gate)}" if p.variant.gate else ""
        lines.append(_field("recipe", p.variant.mode + gate))
    if p.evaluation is not None:
        lines.append(_field("evaluation", _evaluation_text(p.evaluation.model_dump())))
    if p.channel or p.pipeline:
        pipeline = f" (pipeline {p.pipeline})" if p.pipeline else ""
        lines.append(_field("channel", (p.channel or "-") + pipeline))
    if p.approved_by:
        at = f" at {p.approved_at.isoformat()}" if p.approved_at else ""
        lines.append(_field("approved by", p.approved_by + at))
    if p.created_by:
        lines.append(_field("registered by", p.created_by))
    if p.released_by:
        lines.append(_field("released by", p.released_by))
    if p.trimmed:
        lines.append(_field("trimmed", ", ".join(p.trimmed) + " (to fit the release's bound)"))
    return lines


def summarize(values: Mapping[str, Any], limit: int = SUMMARY_ENTRIES) -> str:
    """``k=v, …`` sorted by key, the first ``limit`` entries and how many more."""
    items = sorted(values.items())
    shown = ", ".join(f"{k}={_value(v)}" for k, v in items[:limit])
    more = len(items) - limit
    return shown + (f", … ({more} more)" if more > 0 else "")


def _evaluation_text(summary: Mapping[str, Any]) -> str:
    parts = []
    parent, candidate = summary.get("accuracy_parent"), summary.get("accuracy_candidate")
    if parent is not None and candidate is not None:
        parts.append(f"accuracy {parent:.4g} -> {candidate:.4g}")
    for key, label in (
        ("top1_agreement", "agreement"),
        ("latency_ratio", "latency x"),
        ("size_ratio", "size x"),
        ("samples", "samples"),
    ):
        value = summary.get(key)
        if value is not None:
            parts.append(f"{label}{'' if label.endswith('x') else ' '}{_value(value)}")
    return ", ".join(parts) or "-"


def _dataset_text(dataset: Mapping[str, Any]) -> str:
    text = str(dataset.get("name") or "?")
    if dataset.get("context"):
        text += f" [{dataset['context']}]"
    if dataset.get("digest"):
        text += f" digest {dataset['digest']}"
    if dataset.get("source"):
        text += f" ({dataset['source']})"
    return text


def _field(label: str, value: str) -> str:
    return f"  {label + ':':<{LABEL_WIDTH}}{value}"


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _str(value: Any) -> str | None:
    return None if value is None or isinstance(value, (dict, list)) else str(value)
