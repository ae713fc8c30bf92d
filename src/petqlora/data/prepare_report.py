"""The prepare_data report: what was read, skipped, collapsed as duplicate, leaked, capped and kept, and what
was noticed on the way (files the source's index does not name, animated images), as report.json and
report.md (written on failure too, so a refused run explains itself)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from petqlora.data.dataset import SPLITS

if TYPE_CHECKING:
    from petqlora.data.prepare_config import PrepareDataConfig


def new_report(config: PrepareDataConfig) -> dict:
    """The report of a run that has just started; the steps fill it in as they go."""
    return {
        "status": "running", "error": None, "source": {"kind": config.source_kind, "uri": config.source},
        "seed": config.seed, "config": dataclasses.asdict(config),
        "totals": {"entries": 0, "usable": 0, "skipped": 0, "duplicates_collapsed": 0, "leakage_dropped": 0,
                   "capped": 0},
        "splits": {}, "per_class": {}, "skipped": [], "empty_classes": [], "escapes": [],
        "duplicates": {"conflicts": [], "collapsed": []}, "leakage": {"pairs": [], "dropped": 0},
        "multi_frame": [], "unlisted": [], "ignored": [], "notes": [],
    }


def write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, report: dict) -> None:
    write_json(out / "report.json", report)
    lines = ["# prepare_data report", ""]
    source = report["source"]
    lines.append(f"- source: `{source['kind']}` `{_md(source['uri'])}`; seed {report['seed']}")
    lines.append(f"- status: **{report['status']}**")
    if report.get("error"):
        lines += ["", "```", report["error"], "```"]
    if report.get("dataset_hash"):
        lines.append(f"- dataset hash: `{report['dataset_hash']}`")
    totals = report["totals"]
    lines.append(
        f"- entries: {totals['entries']}; usable {totals['usable']}; skipped {totals['skipped']}; duplicates "
        f"collapsed {totals['duplicates_collapsed']}; leakage dropped {totals['leakage_dropped']}; over the "
        f"per-class caps {totals['capped']}"
    )
    lines += _per_class_table(report) + _skipped_table(report) + _duplicates_tables(report)
    lines += _leakage_table(report) + _notes(report)
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _per_class_table(report: dict) -> list[str]:
    per_class = report.get("per_class")
    if not per_class:
        return []
    lines = ["", "## Images per split and class", "", "| class | " + " | ".join(SPLITS) + " |",
             "| --- |" + " ---: |" * len(SPLITS)]
    for label in sorted(per_class):
        lines.append(f"| {_md(label)} | " + " | ".join(str(per_class[label].get(s, 0)) for s in SPLITS) + " |")
    lines.append("| **total** | " + " | ".join(str(report["splits"].get(s, 0)) for s in SPLITS) + " |")
    return lines


def _skipped_table(report: dict) -> list[str]:
    lines = ["", f"## Skipped files ({len(report['skipped'])})", ""]
    if not report["skipped"]:
        return lines + ["None."]
    lines += ["| file | reason |", "| --- | --- |"]
    return lines + [f"| {_md(s['source'])} | {_md(s['reason'])} |" for s in report["skipped"]]


def _duplicates_tables(report: dict) -> list[str]:
    conflicts, collapsed = report["duplicates"]["conflicts"], report["duplicates"]["collapsed"]
    lines = []
    if conflicts:
        lines += ["", f"## Same picture under two labels ({len(conflicts)}, refused)", "",
                  "| file | label | file | label | match |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {_md(p['a']['source'])} | {_md(p['a']['label'])} | {_md(p['b']['source'])} | "
                  f"{_md(p['b']['label'])} | {_md(p['kind'])} |" for p in conflicts]
    lines += ["", f"## Duplicates within a class ({len(collapsed)} collapsed to one copy)", ""]
    if not collapsed:
        return lines + ["None."]
    lines += ["| class | kept | dropped | match |", "| --- | --- | --- | --- |"]
    return lines + [f"| {_md(d['kept']['label'])} | {_md(d['kept']['source'])} | {_md(d['dropped']['source'])} | "
                     f"{_md(d['kind'])} |" for d in collapsed]


def _leakage_table(report: dict) -> list[str]:
    pairs = report["leakage"]["pairs"]
    lines = ["", f"## Leakage across splits ({len(pairs)} pairs, {report['leakage']['dropped']} dropped)", ""]
    if not pairs:
        return lines + ["None."]
    lines += ["| first | second | match |", "| --- | --- | --- |"]
    return lines + [
        f"| {p['a']['split']}: {_md(p['a']['source'])} | {p['b']['split']}: {_md(p['b']['source'])} "
        f"| {_md(p['kind'])} |"
        for p in pairs
    ]


def _notes(report: dict) -> list[str]:
    extra = [f"empty class {c!r} (no usable images): left out" for c in report["empty_classes"]]
    extra += report["notes"]
    extra += [f"{m['source']}: {m['frames']} frames (animated or multi-picture): the first frame is used"
              for m in report["multi_frame"]]
    if report["unlisted"]:
        extra.append(f"{len(report['unlisted'])} image file(s) on disk that the annotations do not name (not "
                     "used): " + ", ".join(report["unlisted"][:20]) + (" ..." if len(report["unlisted"]) > 20 else ""))
    if report["ignored"]:
        extra.append(f"{len(report['ignored'])} file(s) ignored (not images by extension): "
                     + ", ".join(report["ignored"][:20]) + (" ..." if len(report["ignored"]) > 20 else ""))
    return ["", "## Notes", ""] + [f"- {_md(n)}" for n in extra] if extra else []
