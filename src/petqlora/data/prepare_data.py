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

The steps, in order: list the entries (labels only, no pixels); read, verify, hash and copy each image
one at a time (`ingest`); split; check for leakage across splits; cap per class (`splits`); write the JSONL
files (`prepare_output`), the manifest and a report (`prepare_report`). The layout written is read back by
`petqlora.data.dataset`.
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

from petqlora import __version__, schema
from petqlora.entrypoint import run_step
from petqlora.data.dataset import DATASET_FORMAT, SPLITS, dataset_hash
from petqlora.data.entries import Item, Listing, PrepareDataError
from petqlora.data.ingest import assign_ids, canonical_names, ingest_all
from petqlora.data.manifest_source import GcsReader
from petqlora.data.prepare_output import prepare_out_dir, write_splits
from petqlora.data.prepare_report import new_report, write_json, write_report
from petqlora.data.sources import SOURCE_KINDS, detect_kind, list_source
from petqlora.data.splits import assign_splits, cap, drop_leaked, find_leaks, pair_line
from petqlora.gemma import prompts
from petqlora.params import PipelineParams
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as

__all__ = ["PrepareDataConfig", "PrepareDataError", "PreparedDataset", "main", "prepare_data"]

log = logging.getLogger(__name__)

LEAKAGE_POLICIES = ("fail", "drop")
_MAX_LISTED = 50  # lines of a list shown in an error message; report.json has them all


def _shared(name: str):
    return same_as(PipelineParams, name)


@dataclass(frozen=True)
class PrepareDataConfig:
    source: str = required("Path or gs:// uri of the dataset (gs:// only for a manifest; Vertex mounts buckets "
                           "under /gcs/).", nonempty=True)
    source_kind: str = field("auto", "What the source is; auto detects it.", allowed=SOURCE_KINDS)
    seed: int = _shared("seed")  # same input + seed -> same splits
    val_fraction: float = _shared("val_fraction")  # of the source's train part when it has its own split
    test_fraction: float = _shared("test_fraction")  # unused when the source has its own test split
    use_source_split: bool = field(True, "Keep the source's own train/test split (Oxford, HF, a manifest column).")
    max_per_class_train: int | None = field(None, "Cap on training images per class; None: no cap (19 gives the "
                                            "published 700-image run over 37 breeds).", low=1)
    max_per_class_eval: int | None = field(None, "Cap on validation and test images per class; None: no cap.", low=1)
    on_bad_input: str = _shared("on_bad_input")  # fail: the first bad file raises; skip: listed in the report
    max_skipped_fraction: float = field(0.05, "Skip more than this share and the step fails with the list.",
                                        low=0, high=1)
    on_leakage: str = field("fail", "An image in two splits: fail, or drop the later split's copy.",
                            allowed=LEAKAGE_POLICIES)
    near_duplicate_distance: int = field(4, "Perceptual-hash Hamming distance of near duplicates; -1 disables "
                                         "the check.", low=-1, high=32,
                                         fix="keep it small: above about 10 unrelated images start to match")
    max_image_pixels: int = field(40_000_000, "Decompression-bomb guard, checked before decoding.", low=1)
    instruction_template: str = field(prompts.DEFAULT_INSTRUCTION, "The instruction; '{classes}' becomes the "
                                      "class list.")

    def __post_init__(self) -> None:
        p = Problems("PrepareDataConfig")
        wrong = schema.check(self, p)
        if not {"val_fraction", "test_fraction"} & wrong:
            p.check(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction",
                    self.val_fraction + self.test_fraction, "must be below 1 so that train keeps images",
                    "lower one of them")
        if "instruction_template" not in wrong:
            _check_instruction(p, self.instruction_template)
        p.raise_if_any()


def _check_instruction(p: Problems, template: str) -> None:
    try:
        prompts.render_instruction(["a", "b"], template)
    except (ValueError, KeyError, IndexError) as exc:
        p.add("instruction_template", template, f"does not render ({exc})",
              "it needs exactly one '{classes}' placeholder and '{{'/'}}' for literal braces")


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
    canonical, source_of = canonical_names(source)
    assign_ids(source.entries, canonical)
    items = _check_images(source, canonical, config, out / "images", report)
    split_rng, cap_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    fractions = {"validation": config.val_fraction, "test": config.test_fraction}
    splits = assign_splits(items, config.use_source_split, fractions, split_rng, report["notes"])
    # Leakage is judged before the caps, so caps fill from clean images and the verdict does not hang on
    # which images a cap happened to keep.
    _remove_leakage(splits, config, report)
    caps = {"train": config.max_per_class_train, "validation": config.max_per_class_eval,
            "test": config.max_per_class_eval}
    report["totals"]["capped"] = cap(splits, caps, cap_rng)
    classes = _count_per_class(splits, len(items), report)
    instruction = prompts.render_instruction(classes, config.instruction_template)
    write_splits(out, splits, instruction)
    return _finish(out, config, report, splits, classes, {c: source_of[c] for c in classes}, instruction)


def _list_entries(config: PrepareDataConfig, report: dict, stack: contextlib.ExitStack) -> Listing:
    kind = detect_kind(config.source) if config.source_kind == "auto" else config.source_kind
    report["source"]["kind"] = kind
    source = list_source(kind, config.source, config.use_source_split, GcsReader(), stack)
    report["ignored"], report["notes"] = source.ignored, source.notes
    report["totals"]["entries"] = len(source.entries)
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
        max_image_pixels=config.max_image_pixels, with_phash=config.near_duplicate_distance >= 0,
    )
    report["totals"]["skipped"] = len(skipped)
    report["totals"]["usable"] = len(items)
    if len(skipped) / total > config.max_skipped_fraction:
        raise PrepareDataError(
            f"{len(skipped)} of {total} files ({len(skipped) / total:.1%}) are unusable, more than "
            f"max_skipped_fraction={config.max_skipped_fraction}; fix or remove them, or raise the threshold:\n"
            + _listed([f"{s['source']}: {s['reason']}" for s in skipped])
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


def _remove_leakage(splits: dict[str, list[Item]], config: PrepareDataConfig, report: dict) -> None:
    pairs = find_leaks(splits, config.near_duplicate_distance)
    report["leakage"]["pairs"] = pairs
    if pairs and config.on_leakage == "fail":
        raise PrepareDataError(
            f"{len(pairs)} image pair(s) appear in two splits (leakage); remove one copy of each, or pass "
            "on_leakage='drop' to drop the later split's copies:\n" + _listed([pair_line(p) for p in pairs])
        )
    report["leakage"]["dropped"] = report["totals"]["leakage_dropped"] = drop_leaked(splits, pairs)


def _count_per_class(splits: dict[str, list[Item]], usable: int, report: dict) -> list[str]:
    """The classes kept; fails when a split is empty or a class has nothing to train on."""
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
    untrained = [c for c in classes if per_class[c]["train"] == 0]
    if untrained:
        raise PrepareDataError(
            f"class(es) {', '.join(map(repr, untrained))} have no training images; add some to the source's "
            "train split, or pass use_source_split=False"
        )
    for split in ("validation", "test"):
        missing = [c for c in classes if per_class[c][split] == 0]
        if missing:
            report["notes"].append(f"{split} has no images of {', '.join(missing)}")
    return classes


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
        "created_by": f"petqlora {__version__}",
    }
    write_json(out / "manifest.json", manifest)
    log.info("prepare_data: wrote %s (%s), splits %s, %d skipped", out, digest[:12], report["splits"],
             totals["skipped"])
    return PreparedDataset(out, digest, classes, dict(report["splits"]), totals["skipped"])


def _listed(lines: list[str]) -> str:
    shown = "\n".join(f"  - {line}" for line in lines[:_MAX_LISTED])
    more = len(lines) - _MAX_LISTED
    return shown + (f"\n  ... and {more} more (all in report.json)" if more > 0 else "")


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
