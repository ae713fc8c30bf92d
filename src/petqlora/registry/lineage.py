"""Lineage as text: the chain dataset -> token-boundary report -> adapter -> evaluation -> registered version,
from the local registry's record (format_lineage) or from Vertex ML Metadata (format_vertex_lineage over
petqlora.cloud.vertex_lineage.lineage_from_vertex)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from petqlora.registry.local import ModelVersion

__all__ = ["LINEAGE_CHAIN", "format_lineage", "format_vertex_lineage"]

# The lineage chain the pipeline records, in order: key in the lineage dict -> printed title.
LINEAGE_CHAIN = (
    ("dataset", "dataset"),
    ("token_boundary_report", "token-boundary report"),
    ("adapter", "adapter"),
    ("evaluation", "evaluation"),
)

_NOT_RECORDED = "(not recorded)"


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in sorted(value.items())) or "(none)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _link_lines(title: str, link: Any) -> list[str]:
    if not isinstance(link, dict) or not link:
        return [f"{title}: {_NOT_RECORDED}"]
    content_hash = link.get("sha256") or link.get("hash")
    lines = [
        f"{title}",
        f"    uri:    {link.get('uri') or _NOT_RECORDED}",
        f"    sha256: {content_hash or _NOT_RECORDED}",
        f"    inputs: {_short(link['inputs']) if link.get('inputs') else _NOT_RECORDED}",
    ]
    extra = {k: v for k, v in link.items() if k not in ("uri", "sha256", "hash", "inputs")}
    if extra:
        lines.append(f"    other:  {_short(extra)}")
    return lines


def format_lineage(version: ModelVersion) -> str:
    """The chain dataset -> token-boundary report -> adapter -> evaluation -> registered version, as text."""
    lineage = version.lineage if isinstance(version.lineage, dict) else {}
    blocks = [_link_lines(title, lineage.get(key)) for key, title in LINEAGE_CHAIN]
    known = {key for key, _ in LINEAGE_CHAIN}
    blocks += [_link_lines(key, lineage[key]) for key in sorted(lineage) if key not in known]
    metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(version.metrics.items())) or "(none)"
    blocks.append([
        f"registered version {version.ref}",
        f"    uri:     {version.artifact_uri}",
        f"    run:     {version.run_id}",
        f"    aliases: {', '.join(version.aliases) or '(none)'}",
        f"    metrics: {metrics}",
        f"    labels:  {_short(version.labels) if version.labels else '(none)'}",
        f"    created: {version.created_at}",
    ])
    out = [f"Lineage of {version.ref}"]
    for i, block in enumerate(blocks):
        if i:
            out.append("  |")
            out.append("  v")
        out.extend(block)
    return "\n".join(out)


def format_vertex_lineage(graph: dict, ref: str, artifact_uri: str) -> str:
    """format_lineage's chain, read from the ML Metadata subgraph around the adapter (lineage_from_vertex):
    the register_model execution that read the adapter names the dataset, token-boundary report and
    evaluation it registered with; each link's inputs are those of the execution that wrote it."""
    arts = {a["name"]: a for a in graph["artifacts"]}

    def events(kind: str, *, artifact: str | None = None, execution: str | None = None) -> list[dict]:
        return [e for e in graph["events"] if e["type"] == kind and e["artifact"] in arts
                and artifact in (None, e["artifact"]) and execution in (None, e["execution"])]

    adapter = next((a for a in arts.values() if a["uri"] == artifact_uri), None)
    chain = {"adapter": adapter} if adapter else {}
    for read in events("INPUT", artifact=adapter["name"]) if adapter else []:
        written = [arts[e["artifact"]] for e in events("OUTPUT", execution=read["execution"])]
        registered = next((a for a in written if a["display_name"] == "registered"), None)
        if registered:  # this run's register_model step
            chain.update({arts[e["artifact"]]["display_name"]: arts[e["artifact"]]
                          for e in events("INPUT", execution=read["execution"])}, registered=registered)

    def link(a: dict | None) -> dict | None:
        if a is None:
            return None
        inputs = {arts[e["artifact"]]["display_name"]: arts[e["artifact"]]["uri"]
                  for w in events("OUTPUT", artifact=a["name"]) for e in events("INPUT", execution=w["execution"])}
        meta = a.get("metadata") or {}
        return {"uri": a["uri"], "sha256": meta.get("sha256") or meta.get("dataset_hash"), "inputs": inputs}

    titles = [("dataset", "dataset"), ("records", "token-boundary report"), ("adapter", "adapter"),
              ("evaluation", "evaluation"), ("registered", f"registered version {ref}")]
    out = [f"Lineage of {ref} (Vertex ML Metadata)"]
    for i, (key, title) in enumerate(titles):
        out += (["  |", "  v"] if i else []) + _link_lines(title, link(chain.get(key)))
    return "\n".join(out)
