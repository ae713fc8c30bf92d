"""The output folder of prepare_data: made ready for a run (or a rerun, never touching anyone else's files),
then filled with the split JSONL files and the images they keep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from petqlora.data.dataset import SPLITS
from petqlora.data.entries import Item
from petqlora.gemma import prompts

# What prepare_data writes into out_dir; anything else there is someone else's and is never touched.
OUTPUT_NAMES = frozenset(
    {"manifest.json", "report.md", "report.json", "images"} | {f"{s}.jsonl" for s in SPLITS}
)


def prepare_out_dir(out_dir: str | Path, source: str) -> Path:
    if not isinstance(out_dir, (str, Path)) or not str(out_dir).strip():
        raise ValueError(f"out_dir={out_dir!r} must be a non-empty local path; pass the artifact folder")
    if str(out_dir).startswith("gs://"):
        raise ValueError(
            f"out_dir={out_dir!r}: write to a local path; on Vertex pass the /gcs/<bucket>/... mount path"
        )
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={str(out)!r} is a file; pass a folder (new or empty)")
    if not source.startswith("gs://") and Path(source).exists():
        src, dst = Path(source).resolve(), out.resolve()
        if dst == src or (src.is_dir() and dst.is_relative_to(src)) or src.is_relative_to(dst):
            raise ValueError(
                f"out_dir={str(out)!r} overlaps source={source!r}; the output would be read as input. "
                "Pass a folder outside the source"
            )
    if out.is_dir():
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES)
        if foreign:
            raise ValueError(
                f"out_dir={str(out)!r} holds files prepare_data did not write ({', '.join(foreign[:5])}); "
                "pass a new or empty folder"
            )
    out.mkdir(parents=True, exist_ok=True)
    # A rerun (a retried pipeline task) replaces an earlier attempt: manifest first, so the folder never
    # looks complete while it is being rewritten.
    for name in ("manifest.json", "report.md", "report.json", *(f"{s}.jsonl" for s in SPLITS)):
        (out / name).unlink(missing_ok=True)
    (out / "images").mkdir(exist_ok=True)
    return out


def write_splits(out: Path, splits: dict[str, list[Item]], instruction: str) -> None:
    for split in SPLITS:
        with (out / f"{split}.jsonl").open("w", encoding="utf-8") as f:
            for item in sorted(splits[split], key=lambda it: it.id):
                record = {
                    "id": item.id, "image": f"images/{item.sha256}.{item.ext}", "label": item.label,
                    "width": item.width, "height": item.height, "sha256": item.sha256, "source": item.source,
                    "messages": prompts.build_messages(instruction, item.label),
                }
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    # Images of skipped, dropped or capped entries (and of an earlier attempt) are not part of the artifact.
    kept = {f"{it.sha256}.{it.ext}" for split in SPLITS for it in splits[split]}
    for path in (out / "images").iterdir():
        if path.name not in kept:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
