"""prepare_data: turn a pet dataset as users have it into a dataset artifact with hashed, stratified,
chat-formatted splits. Here: the config, the step's orchestration, and the `main(argv)` entrypoint.

    python -m petqlora.data.prepare_data --dataset /data/oxford-iiit-pet --output /tmp/pets [--config CONFIG.json]

Sources, detected from what `source` is (or named with `source_kind`), read in `sources`:
  oxford        ROOT/images/*.jpg + ROOT/annotations/{list,trainval,test}.txt (the native layout)
  hf            a `save_to_disk` folder, parquet file(s), or (in the cloud) a Hub name: an Image column
                and a ClassLabel (or text) label column
  image_folder  ROOT/<class name>/*.{jpg,jpeg,png,webp,bmp,gif}
  manifest      a CSV or JSON-lines file of `uri,label` rows (optional `split`); uris are local paths
                (relative to the manifest) or gs:// objects

The steps, in order: list the entries (labels only, no pixels), refusing paths that leave the source's
folder (`sources`); check the class names (`class_names`); read, verify, hash and copy each image one at a
time, regular files under a byte cap only (`ingest`, `local_files`); refuse one picture under two labels and
collapse copies within a class (`duplicates`); split; check for leakage across splits; cap per class
(`splits`); check each class has enough images in each split; write the JSONL files (`prepare_output`), the
manifest and a report (`prepare_report`). The layout written is read back by `petqlora.data.dataset`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petqlora import __version__
from petqlora.entrypoint import run_step
from petqlora.data.dataset import DATASET_FORMAT, SPLITS, dataset_hash
from petqlora.data.class_names import class_names, require_two_classes
from petqlora.data.duplicates import find_duplicates, refuse_conflicts
from petqlora.data.entries import Item, Listing, PrepareDataError, listed
from petqlora.data.ingest import assign_ids, ingest_all, refuse_escapes
from petqlora.data.manifest_source import GcsReader
from petqlora.data.prepare_config import PrepareDataConfig
from petqlora.data.prepare_output import prepare_out_dir, write_splits
from petqlora.data.prepare_report import new_report, write_json, write_report
from petqlora.data.sources import detect_kind, list_source
from petqlora.data.splits import assign_splits, bound_splits, cap, drop_leaked, find_leaks, pair_line
from petqlora.gemma import prompts

__all__ = ["PrepareDataConfig", "PrepareDataError", "PreparedDataset", "main", "prepare_data"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    dataset_hash: str
    classes: list[str]
    splits: dict[str, int]
    skipped: int


# --------------------------------------------------------------------------------------------- step


def prepare_data(config: PrepareDataConfig, out_dir: str | Path) -> PreparedDataset:
    """Build the dataset artifact in `out_dir` from `config.source`; see the module docstring."""
    if not isinstance(config, PrepareDataConfig):
        raise ValueError(f"config={config!r} must be a PrepareDataConfig; build one with PrepareDataConfig(source=...)")
    out = prepare_out_dir(out_dir, config.source)
    report = new_report(config)
    try:
        with contextlib.ExitStack() as stack:
            result = _run(config, out, report, stack)
    except PrepareDataError as exc:
        # Leave only the explanation behind: no manifest (so nothing mistakes this for a dataset), no images.
        report["status"], report["error"] = "failed", str(exc)
        shutil.rmtree(out / "images", ignore_errors=True)
        write_report(out, report)
        raise
    return result


def _run(config: PrepareDataConfig, out: Path, report: dict, stack: contextlib.ExitStack) -> PreparedDataset:
    source = _list_entries(config, report, stack)
    canonical, source_of = class_names(source, config.min_class_name_distance)
    require_two_classes(sorted({canonical[e.label] for e in source.entries
                                if e.problem is None and e.label in canonical}), "As listed,")
    assign_ids(source.entries, canonical)
    items = _collapse_duplicates(_check_images(source, canonical, config, out / "images", report), config, report)
    split_rng, cap_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    fractions = {"validation": config.val_fraction, "test": config.test_fraction}
    splits = assign_splits(items, config.use_source_split, fractions, split_rng, report["notes"])
    # Leakage is judged before the caps, so caps fill from clean images and the verdict does not hang on
    # which images a cap happened to keep.
    _remove_leakage(splits, config, report)
    caps = {"train": config.max_per_class_train, "validation": config.max_per_class_eval,
            "test": config.max_per_class_eval}
    report["totals"]["capped"] = cap(splits, caps, cap_rng)
    classes = _count_per_class(splits, len(items), config, report)
    instruction = prompts.render_instruction(classes, config.instruction_template)
    write_splits(out, splits, instruction)
    return _finish(out, config, report, splits, classes, {c: source_of[c] for c in classes}, instruction)


def _list_entries(config: PrepareDataConfig, report: dict, stack: contextlib.ExitStack) -> Listing:
    kind = detect_kind(config.source) if config.source_kind == "auto" else config.source_kind
    report["source"]["kind"] = kind
    source = list_source(kind, config.source, config.use_source_split, GcsReader(), stack, config.allow_outside_root)
    report["ignored"], report["notes"], report["unlisted"] = source.ignored, source.notes, source.unlisted
    report["totals"]["entries"] = len(source.entries)
    report["escapes"] = source.escapes
    refuse_escapes(source.escapes)  # before any image is read
    if not source.entries:
        raise PrepareDataError(f"source {config.source!r} ({kind}) lists no images; check the path and its layout")
    return source


def _check_images(
    source: Listing, canonical: dict[str, str], config: PrepareDataConfig, images_dir: Path, report: dict
) -> list[Item]:
    """The usable items; fails when too many files are bad, or (under on_bad_input='fail') a class is empty."""
    total = len(source.entries)
    log.info("prepare_data: checking %d images from %s (%s)", total, config.source, source.kind)
    skipped = report["skipped"]
    items = ingest_all(
        source.entries, canonical, images_dir, skipped, on_bad_input=config.on_bad_input,
        max_image_pixels=config.max_image_pixels, max_image_bytes=config.max_image_bytes,
        with_phash=config.near_duplicate_distance >= 0,
    )
    report["totals"]["skipped"] = len(skipped)
    report["totals"]["usable"] = len(items)
    report["multi_frame"] = [{"source": it.source, "frames": it.frames} for it in items if it.frames > 1]
    if len(skipped) / total > config.max_skipped_fraction:
        raise PrepareDataError(
            f"{len(skipped)} of {total} files ({len(skipped) / total:.1%}) are unusable, more than "
            f"max_skipped_fraction={config.max_skipped_fraction}; fix or remove them, or raise the threshold:\n"
            + listed([f"{s['source']}: {s['reason']}" for s in skipped])
        )
    # A class the source names but that has no usable image cannot be learned or measured.
    empty = sorted(set(canonical.values()) - {item.label for item in items})
    if empty and config.on_bad_input == "fail":
        raise PrepareDataError(
            f"class(es) {', '.join(map(repr, empty))} have no usable images; add images or remove the class "
            "from the source, or pass on_bad_input='skip' to leave them out"
        )
    report["empty_classes"] = empty
    return items


def _collapse_duplicates(items: list[Item], config: PrepareDataConfig, report: dict) -> list[Item]:
    """Over the whole dataset, before any split: one picture under two labels is refused; copies within a
    class are collapsed to one and listed."""
    found = find_duplicates(items, config.near_duplicate_distance, bound_splits(items, config.use_source_split))
    report["duplicates"] = {"conflicts": found.conflicts, "collapsed": found.collapsed}
    report["totals"]["duplicates_collapsed"] = len(found.collapsed)
    refuse_conflicts(found.conflicts)
    return found.kept


def _remove_leakage(splits: dict[str, list[Item]], config: PrepareDataConfig, report: dict) -> None:
    pairs = find_leaks(splits, config.near_duplicate_distance)
    report["leakage"]["pairs"] = pairs
    if pairs and config.on_leakage == "fail":
        raise PrepareDataError(
            f"{len(pairs)} image pair(s) appear in two splits (leakage); remove one copy of each, or pass "
            "on_leakage='drop' to drop the later split's copies:\n" + listed([pair_line(p) for p in pairs])
        )
    report["leakage"]["dropped"] = report["totals"]["leakage_dropped"] = drop_leaked(splits, pairs)


def _count_per_class(splits: dict[str, list[Item]], usable: int, config: PrepareDataConfig, report: dict) -> list[str]:
    """The classes kept; fails when a split is empty, fewer than two classes are left, or a class has fewer
    images in a split than the minimums."""
    classes = sorted({item.label for split in SPLITS for item in splits[split]})
    per_class = {label: {s: 0 for s in SPLITS} for label in classes}
    for split in SPLITS:
        for item in splits[split]:
            per_class[item.label][split] += 1
    report["per_class"] = per_class
    report["splits"] = {s: len(splits[s]) for s in SPLITS}
    empty_splits = [s for s in SPLITS if not splits[s]]
    if empty_splits:
        raise PrepareDataError(
            f"split(s) {', '.join(empty_splits)} would be empty ({usable} usable images over "
            f"{len(classes)} classes); add images, or raise the fractions or caps"
        )
    require_two_classes(classes, "After skipping bad files, collapsing duplicates and capping,")
    untrained = [c for c in classes if per_class[c]["train"] == 0]
    if untrained:
        raise PrepareDataError(
            f"class(es) {', '.join(map(repr, untrained))} have no training images; add some to the source's "
            "train split, or pass use_source_split=False"
        )
    _require_minimums(per_class, config)
    for split in ("validation", "test"):
        missing = [c for c in classes if per_class[c][split] == 0]
        if missing:
            report["notes"].append(f"{split} has no images of {', '.join(missing)}")
    return classes


def _require_minimums(per_class: dict[str, dict[str, int]], config: PrepareDataConfig) -> None:
    least = {"train": config.min_per_class_train, "validation": config.min_per_class_eval,
             "test": config.min_per_class_eval}
    short = [f"{c!r}: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS)
             for c, counts in sorted(per_class.items()) if any(counts[s] < least[s] for s in SPLITS)]
    if short:
        raise PrepareDataError(
            f"{len(short)} class(es) have fewer images in a split than min_per_class_train="
            f"{config.min_per_class_train} / min_per_class_eval={config.min_per_class_eval} (after skipping, "
            "collapsing duplicates and capping): such a class trains on too little, or cannot be measured. Add "
            "images of these classes, remove them from the source, or lower the minimums (0 turns a check "
            "off):\n" + listed(short)
        )


def _finish(
    out: Path, config: PrepareDataConfig, report: dict, splits: dict[str, list[Item]], classes: list[str],
    class_source_names: dict[str, str], instruction: str,
) -> PreparedDataset:
    """The report, then the manifest: written last, its presence means the artifact is complete."""
    digest = dataset_hash((s, it.id, it.label, it.sha256) for s in SPLITS for it in splits[s])
    report["status"], report["dataset_hash"] = "ok", digest
    write_report(out, report)
    totals = report["totals"]
    manifest = {
        "format": DATASET_FORMAT,
        "dataset_hash": digest,
        "source": {"kind": report["source"]["kind"], "uri": config.source},
        "seed": config.seed,
        "classes": classes,
        "class_source_names": class_source_names,
        "instruction": instruction,
        "splits": report["splits"],
        "skipped": totals["skipped"],
        "leakage_dropped": totals["leakage_dropped"],
        "duplicates_collapsed": totals["duplicates_collapsed"],
        "created_by": f"petqlora {__version__}",
    }
    write_json(out / "manifest.json", manifest)
    log.info("prepare_data: wrote %s (%s), splits %s, %d skipped", out, digest[:12], report["splits"],
             totals["skipped"])
    return PreparedDataset(out, digest, classes, dict(report["splits"]), totals["skipped"])


# --------------------------------------------------------------------------------------------- entrypoint


def _prepare_and_print(source: str, out: str, config: PrepareDataConfig) -> None:
    result = prepare_data(config, out)
    print(json.dumps({"path": str(result.path), "dataset_hash": result.dataset_hash, "classes": len(result.classes),
                      "splits": result.splits, "skipped": result.skipped}))


def main(argv: list[str] | None = None) -> int:
    """`python -m petqlora.data.prepare_data --dataset SOURCE --output DIR [--config CONFIG.json]`: the config
    holds any other PrepareDataConfig field. 0 on success, 1 when the data is refused, 2 for bad arguments."""
    return run_step(argv, prog="petqlora.data.prepare_data", description=__doc__.split("\n\n")[0],
                    config_cls=PrepareDataConfig, step=_prepare_and_print, refused=(PrepareDataError,),
                    dataset_field="source")


if __name__ == "__main__":
    sys.exit(main())
