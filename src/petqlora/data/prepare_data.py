"""prepare_data: turn a pet dataset as users have it into a dataset artifact with hashed, stratified,
chat-formatted splits.

    python -m petqlora.data.prepare_data --source /data/oxford-iiit-pet --out /tmp/pets --seed 42

Sources, detected from what `source` is (or named with `source_kind`):
  oxford        ROOT/images/*.jpg + ROOT/annotations/{list,trainval,test}.txt (the native layout)
  hf            a `save_to_disk` folder, parquet file(s), or (in the cloud) a Hub name: an Image column
                and a ClassLabel (or text) label column
  image_folder  ROOT/<class name>/*.{jpg,jpeg,png,webp,bmp,gif}
  manifest      a CSV or JSON-lines file of `uri,label` rows (optional `split`); uris are local paths
                (relative to the manifest) or gs:// objects

The steps, in order: list the entries (labels only, no pixels); read, verify, hash and copy each image
one at a time; split; check for leakage across splits; cap per class; write the JSONL files, the
manifest and a report. The layout written is read back by `petqlora.data.dataset`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from petqlora import __version__

from petqlora.gemma import prompts
from petqlora.data.dataset import (
    DATASET_FORMAT,
    FORMAT_EXTENSIONS,
    IMAGE_EXTENSIONS,
    SPLITS,
    canonical_class_name,
    check_pixels,
    dataset_hash,
    pixel_limit,
    to_rgb,
)

log = logging.getLogger(__name__)

SOURCE_KINDS = ("auto", "oxford", "hf", "image_folder", "manifest")
BAD_INPUT_POLICIES = ("fail", "skip")
LEAKAGE_POLICIES = ("fail", "drop")
PROGRESS_EVERY = 500  # files between progress lines on stderr
_MAX_LISTED = 50  # lines of a list shown in an error message; report.json has them all
# Split names sources use, mapped to ours (Hugging Face datasets vary; Oxford calls its train part trainval).
_SPLIT_ALIASES = {
    "train": "train",
    "trainval": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
# What prepare_data writes into out_dir; anything else there is someone else's and is never touched.
_OUTPUT_NAMES = frozenset(
    {"manifest.json", "report.md", "report.json", "images"} | {f"{s}.jsonl" for s in SPLITS}
)


class PrepareDataError(ValueError):
    """The data cannot become a dataset artifact (bad input under the fail policy, leakage, empty split...)."""


@dataclass(frozen=True)
class PrepareDataConfig:
    source: str  # path or gs:// uri (gs:// only for a manifest; Vertex mounts buckets under /gcs/)
    source_kind: str = "auto"  # auto|oxford|hf|image_folder|manifest
    seed: int = 42  # same input + seed -> same splits
    val_fraction: float = 0.1  # of each class; of the source's train part when it has its own split
    test_fraction: float = 0.1  # of each class; unused when the source has its own test split
    use_source_split: bool = True  # Oxford trainval/test, HF splits, a manifest `split` column
    max_per_class_train: int | None = None  # 19 gives the published 700-image run over 37 breeds
    max_per_class_eval: int | None = None  # caps validation and test
    on_bad_input: str = "skip"  # fail: first bad file raises; skip: listed in the report
    max_skipped_fraction: float = 0.05  # skip more than this and the step fails with the list
    on_leakage: str = "fail"  # fail|drop (drop removes the later split's copy)
    near_duplicate_distance: int = 4  # phash Hamming distance; -1 disables the near-duplicate check
    max_image_pixels: int = 40_000_000  # decompression-bomb guard, checked before decoding
    instruction_template: str = prompts.DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        problems: list[str] = []

        def number(name: str, value: object) -> bool:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok:
                problems.append(f"{name}={value!r} must be a number")
            return ok

        def integer(name: str, value: object) -> bool:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok:
                problems.append(f"{name}={value!r} must be an integer")
            return ok

        if not isinstance(self.source, str) or not self.source.strip():
            problems.append(f"source={self.source!r} must be a non-empty path or gs:// uri of the dataset")
        if self.source_kind not in SOURCE_KINDS:
            problems.append(f"source_kind={self.source_kind!r} must be one of {', '.join(SOURCE_KINDS)}")
        if integer("seed", self.seed) and self.seed < 0:
            problems.append(f"seed={self.seed} must be >= 0 (numpy seeds are non-negative)")
        fractions_ok = True
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not number(name, value):
                fractions_ok = False
            elif not 0 < value < 1:
                fractions_ok = False
                problems.append(f"{name}={value} must be between 0 and 1 (exclusive); every split needs images")
        if fractions_ok and self.val_fraction + self.test_fraction >= 1:
            problems.append(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction} must be below 1 "
                "so that train keeps images; lower one of them"
            )
        if not isinstance(self.use_source_split, bool):
            problems.append(f"use_source_split={self.use_source_split!r} must be True or False")
        for name in ("max_per_class_train", "max_per_class_eval"):
            value = getattr(self, name)
            if value is not None and integer(name, value) and value < 1:
                problems.append(f"{name}={value} must be >= 1, or None for no cap")
        if self.on_bad_input not in BAD_INPUT_POLICIES:
            problems.append(f"on_bad_input={self.on_bad_input!r} must be one of {', '.join(BAD_INPUT_POLICIES)}")
        if number("max_skipped_fraction", self.max_skipped_fraction) and not 0 <= self.max_skipped_fraction <= 1:
            problems.append(f"max_skipped_fraction={self.max_skipped_fraction} must be between 0 and 1")
        if self.on_leakage not in LEAKAGE_POLICIES:
            problems.append(f"on_leakage={self.on_leakage!r} must be one of {', '.join(LEAKAGE_POLICIES)}")
        if integer("near_duplicate_distance", self.near_duplicate_distance) and not (
            -1 <= self.near_duplicate_distance <= 32
        ):
            problems.append(
                f"near_duplicate_distance={self.near_duplicate_distance} must be -1 (off) to 32; "
                "above about 10 unrelated images start to match"
            )
        if integer("max_image_pixels", self.max_image_pixels) and self.max_image_pixels < 1:
            problems.append(f"max_image_pixels={self.max_image_pixels} must be >= 1")
        if not isinstance(self.instruction_template, str):
            problems.append(f"instruction_template={self.instruction_template!r} must be text with '{{classes}}'")
        else:
            try:
                prompts.render_instruction(["a", "b"], self.instruction_template)
            except (ValueError, KeyError, IndexError) as exc:
                problems.append(
                    f"instruction_template={self.instruction_template!r} does not render ({exc}); "
                    "it needs exactly one '{classes}' placeholder and '{{'/'}}' for literal braces"
                )
        if problems:
            raise ValueError(
                f"PrepareDataConfig has {len(problems)} problem(s); fix these fields:\n  - "
                + "\n  - ".join(problems)
            )


@dataclass(frozen=True)
class PreparedDataset:
    path: Path
    dataset_hash: str
    classes: list[str]
    splits: dict[str, int]
    skipped: int


class _Bad(Exception):
    """One entry cannot be used; the message is the reason shown to the user."""


@dataclass
class _Entry:
    """A listed image, before its bytes are read."""

    source: str  # source-relative path or uri: shown in reports and kept in the record
    rel: str  # what the id is made from
    label: str | None  # source class name
    read: Callable[[], bytes]
    source_split: str | None = None
    problem: str | None = None  # known bad before reading (no label, malformed row...)
    id: str = ""


@dataclass
class _Item:
    """A usable image: verified, hashed and copied."""

    id: str
    source: str
    label: str  # canonical
    sha256: str
    ext: str
    width: int
    height: int
    phash: int
    source_split: str | None


@dataclass
class _Source:
    kind: str
    entries: list[_Entry]
    declared: list[str] = field(default_factory=list)  # class names the source defines (folders, ClassLabel)
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- reading


class _GcsReader:
    """Reads gs:// objects with google-cloud-storage; one client, created on first use."""

    def __init__(self) -> None:
        self._client = None
        self._error: str | None = None

    def read(self, uri: str) -> bytes:
        bucket, _, name = uri.removeprefix("gs://").partition("/")
        if not bucket or not name:
            raise _Bad(f"{uri!r} is not a gs://bucket/object uri")
        if self._client is None and self._error is None:
            try:
                from google.cloud import storage

                self._client = storage.Client()
            except Exception as exc:  # no credentials, no project, no library: all mean "no access"
                self._error = f"{type(exc).__name__}: {exc}"
        if self._error is not None:
            raise _Bad(
                f"no access to Cloud Storage ({self._error}); run with a service account that can read "
                "the bucket, or `gcloud auth application-default login`"
            )
        try:
            return self._client.bucket(bucket).blob(name).download_as_bytes()
        except Exception as exc:  # NotFound, Forbidden, transport errors: the reason is in the message
            raise _Bad(
                f"cannot read {uri} ({type(exc).__name__}: {exc}); check the object exists and is readable"
            ) from exc


def _read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Bad(f"missing file {path}") from None
    except IsADirectoryError:
        raise _Bad(f"{path} is a directory, not an image file") from None
    except OSError as exc:
        raise _Bad(f"cannot read {path} ({exc.strerror or exc})") from None


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _make_id(rel: str) -> str:
    """A filesystem-safe id from a source-relative path: extension dropped, '/' -> '__', ASCII only."""
    path = PurePosixPath(rel.removeprefix("gs://"))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.with_suffix("")
    parts = [_SAFE.sub("_", part).strip("_.") for part in path.parts if part not in ("/", ".", "..")]
    return "__".join(p for p in parts if p) or "image"


def _split_name(name: str, where: str) -> str:
    mapped = _SPLIT_ALIASES.get(name.strip().lower())
    if mapped is None:
        raise _Bad(f"unknown split {name!r} in {where}; use one of {', '.join(_SPLIT_ALIASES)}")
    return mapped


# --------------------------------------------------------------------------------------------- sources


def _detect_kind(source: str) -> str:
    if source.startswith("gs://"):
        if source.lower().endswith((".csv", ".jsonl", ".json")):
            return "manifest"
        raise PrepareDataError(
            f"source {source!r}: a gs:// source must be a .csv or .jsonl manifest; for a folder, pass "
            "its mounted path (/gcs/<bucket>/...) instead"
        )
    path = Path(source)
    if not path.exists():
        raise PrepareDataError(
            f"source {source!r} does not exist; pass an existing folder or file "
            "(for a Hugging Face Hub name, pass source_kind='hf')"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".csv", ".jsonl", ".json"):
            return "manifest"
        if suffix == ".parquet":
            return "hf"
        raise PrepareDataError(
            f"source {source!r} is a {suffix or 'extension-less'} file; pass a .csv/.jsonl manifest, "
            "a .parquet file, or a folder"
        )
    annotations = path / "annotations"
    if (path / "images").is_dir() and any(
        (annotations / name).is_file() for name in ("list.txt", "trainval.txt", "test.txt")
    ):
        return "oxford"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return "hf"
    if next(path.rglob("*.parquet"), None) is not None:
        return "hf"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "image_folder"
    raise PrepareDataError(
        f"source {source!r} is a folder with no class sub-folders, no images/ + annotations/ and no "
        "dataset files; lay it out as ROOT/<class name>/*.jpg, or pass a manifest"
    )


def _oxford_rows(path: Path) -> Iterable[tuple[int, str | None, str | None]]:
    """(line number, image name, problem) of each non-comment row of an Oxford annotation file."""
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) < 2 or not fields[1].isdigit():
            yield line_no, None, f"malformed row {text!r} (expected 'Image CLASS-ID SPECIES BREED-ID')"
            continue
        yield line_no, fields[0], None


def _oxford_source(root: Path, config: PrepareDataConfig) -> _Source:
    annotations, images = root / "annotations", root / "images"
    if not images.is_dir() or not annotations.is_dir():
        raise PrepareDataError(
            f"source {str(root)!r} is not in the Oxford-IIIT Pet layout (needs images/ and annotations/); "
            "pass source_kind='auto' or the dataset's root folder"
        )
    source = _Source("oxford", [])
    split_files = {"train": annotations / "trainval.txt", "test": annotations / "test.txt"}
    if config.use_source_split and all(p.is_file() for p in split_files.values()):
        listing = list(split_files.items())
    else:
        if config.use_source_split:
            source.notes.append("annotations/trainval.txt or test.txt missing: splits drawn at random")
        list_file = annotations / "list.txt"
        listing = [(None, list_file)] if list_file.is_file() else [
            (None, p) for p in split_files.values() if p.is_file()
        ]
    for split, path in listing:
        for line_no, name, problem in _oxford_rows(path):
            where = f"annotations/{path.name}:{line_no}"
            if problem is not None:
                source.entries.append(_Entry(where, where, None, lambda: b"", split, problem))
                continue
            match = re.fullmatch(r"(.+)_\d+", name)
            rel = f"images/{name}.jpg"
            file = images / f"{name}.jpg"
            entry = _Entry(rel, f"{name}.jpg", match.group(1) if match else None, lambda f=file: _read_local(f), split)
            if match is None:
                entry.problem = f"unknown label: image name {name!r} ({where}) is not '<Breed>_<number>'"
            source.entries.append(entry)
    return source


def _image_folder_source(root: Path) -> _Source:
    if not root.is_dir():
        raise PrepareDataError(
            f"source {str(root)!r} is not a folder; an image folder is ROOT/<class name>/*.jpg"
        )
    source = _Source("image_folder", [])
    for class_dir in sorted(root.iterdir()):
        if class_dir.name.startswith("."):
            continue
        if not class_dir.is_dir():
            source.ignored.append(class_dir.name)
            continue
        source.declared.append(class_dir.name)
        for file in sorted(class_dir.iterdir()):
            rel = f"{class_dir.name}/{file.name}"
            if file.name.startswith("."):
                continue
            if file.is_dir() or file.suffix.lower() not in IMAGE_EXTENSIONS:
                source.ignored.append(rel)
                continue
            source.entries.append(_Entry(rel, rel, class_dir.name, lambda f=file: _read_local(f)))
    return source


def _manifest_rows(text: str, name: str) -> Iterable[tuple[str, dict | None, str | None]]:
    """(where, row, problem) for each row of a CSV or JSON-lines manifest."""
    if name.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        if "uri" not in columns or "label" not in columns:
            raise PrepareDataError(
                f"manifest {name} has columns {columns}; it needs a header with 'uri' and 'label' "
                "(and optionally 'split')"
            )
        for line_no, row in enumerate(reader, start=2):
            yield f"{name}:{line_no}", {(k or "").strip(): v for k, v in row.items()}, None
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"{name}:{line_no}", None, f"not valid JSON ({exc.msg})"
            continue
        if not isinstance(row, dict):
            yield f"{name}:{line_no}", None, "not a JSON object with 'uri' and 'label'"
            continue
        yield f"{name}:{line_no}", row, None


def _manifest_source(uri: str, config: PrepareDataConfig, gcs: _GcsReader) -> _Source:
    if uri.startswith("gs://"):
        try:
            raw = gcs.read(uri)
        except _Bad as exc:
            raise PrepareDataError(f"cannot read manifest: {exc}") from None
        base_gs, base_local = uri.rsplit("/", 1)[0], None
    else:
        path = Path(uri)
        if not path.is_file():
            raise PrepareDataError(f"manifest {uri!r} is not a file; pass a .csv or .jsonl file of uri,label rows")
        raw, base_gs, base_local = path.read_bytes(), None, path.parent
    try:
        text = raw.decode("utf-8-sig")  # -sig: spreadsheet exports start with a byte-order mark
    except UnicodeDecodeError as exc:
        raise PrepareDataError(f"manifest {uri!r} is not UTF-8 text ({exc}); save it as UTF-8") from None
    name = uri.rsplit("/", 1)[-1]
    source = _Source("manifest", [])
    for where, row, problem in _manifest_rows(text, name):
        if row is None:
            source.entries.append(_Entry(where, where, None, lambda: b"", problem=problem))
            continue
        ref, label, split = row.get("uri"), row.get("label"), row.get("split")
        ref = ref.strip() if isinstance(ref, str) else ""
        entry = _Entry(ref or where, ref or where, label if isinstance(label, str) else None, lambda: b"")
        if not ref:
            entry.problem = f"empty uri ({where})"
        elif ref.startswith("gs://"):
            entry.read = lambda r=ref: gcs.read(r)
        elif base_gs is not None and not ref.startswith("/"):
            entry.read = lambda r=f"{base_gs}/{ref}": gcs.read(r)
        else:
            entry.read = lambda p=(base_local / ref if base_local else Path(ref)): _read_local(p)
        if entry.problem is None and (not isinstance(label, str) or not label.strip()):
            entry.problem = f"empty or missing label ({where})"
        if entry.problem is None and config.use_source_split and split not in (None, ""):
            try:
                entry.source_split = _split_name(str(split), where)
            except _Bad as exc:
                entry.problem = str(exc)
        source.entries.append(entry)
    if config.use_source_split and any(e.source_split for e in source.entries):
        for entry in source.entries:
            if entry.problem is None and entry.source_split is None:
                entry.problem = "empty split while other rows have one"
    return source


def _hf_image_bytes(value: object) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path"):
            return _read_local(Path(value["path"]))
    raise _Bad("row has no image bytes and no image path")


def _hf_source(source: str, config: PrepareDataConfig, stack: contextlib.ExitStack) -> _Source:
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
    elif path.exists():
        # A private cache that dies with this call: arrow files of a local parquet copy are not worth keeping.
        cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="petqlora-hf-"))
        if path.is_file():
            loaded = datasets.load_dataset("parquet", data_files={"train": str(path)}, cache_dir=cache)
        else:
            loaded = datasets.load_dataset("parquet", data_dir=str(path), cache_dir=cache)
    else:
        loaded = datasets.load_dataset(source)  # a Hub name: only reachable in the cloud
    parts = {"data": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    result = _Source("hf", [])
    declared: list[str] = []
    for part_name, part in sorted(parts.items()):
        features = part.features
        image_cols = [c for c, f in features.items() if isinstance(f, datasets.Image)]
        image_col = "image" if "image" in image_cols else (image_cols[0] if len(image_cols) == 1 else None)
        labels = {c: f for c, f in features.items() if isinstance(f, datasets.ClassLabel)}
        if "label" in features and (
            "label" in labels or getattr(features["label"], "dtype", None) in ("string", "large_string")
        ):
            label_col = "label"
        else:
            label_col = next(iter(labels)) if len(labels) == 1 else None
        if image_col is None or label_col is None:
            raise PrepareDataError(
                f"Hugging Face dataset {source!r} (split {part_name!r}) has columns {list(features)}; "
                "it needs one Image column (named 'image' when there are several) and a ClassLabel or "
                "text column named 'label'"
            )
        names = labels[label_col].names if label_col in labels else None
        for name in names or []:
            if name not in declared:
                declared.append(name)
        split = None
        if config.use_source_split and len(parts) > 1:
            try:
                split = _split_name(part_name, f"Hugging Face dataset {source!r}")
            except _Bad as exc:
                raise PrepareDataError(f"{exc}, or pass use_source_split=False") from None
        images = part.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        ids = list(part["image_id"]) if isinstance(features.get("image_id"), datasets.Value) else None
        for i, raw_label in enumerate(part[label_col]):
            key = str(ids[i]) if ids is not None and ids[i] not in (None, "") else str(i)
            rel = key if part_name == "data" else f"{part_name}/{key}"
            read = lambda d=images, i=i, c=image_col: _hf_image_bytes(d[i][c])  # noqa: E731 (bound per row)
            entry = _Entry(rel, rel, None, read, split)
            if names is not None:
                if isinstance(raw_label, int) and 0 <= raw_label < len(names):
                    entry.label = names[raw_label]
                else:
                    entry.problem = f"unknown label id {raw_label!r} (the ClassLabel has {len(names)} names)"
            elif isinstance(raw_label, str) and raw_label.strip():
                entry.label = raw_label
            else:
                entry.problem = "empty or missing label"
            result.entries.append(entry)
    result.declared = declared
    return result


# --------------------------------------------------------------------------------------------- checks


def _ingest(entry: _Entry, config: PrepareDataConfig, images_dir: Path) -> _Item:
    """Read, fully verify, hash and copy one image; raise _Bad with the reason when it is unusable."""
    data = entry.read()
    if not data:
        raise _Bad("empty file (0 bytes)")
    try:
        with pixel_limit(config.max_image_pixels):
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in FORMAT_EXTENSIONS:
                    raise _Bad(f"unsupported image format {image.format} (accepted: {', '.join(FORMAT_EXTENSIONS)})")
                ext = FORMAT_EXTENSIONS[image.format]
                check_pixels(image, config.max_image_pixels)
                image.verify()
            # verify() leaves the image unusable and misses truncation: decode it for real.
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                rgb = to_rgb(image)
    except _Bad:
        raise
    except UnidentifiedImageError:
        raise _Bad("not an image (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as exc:
        raise _Bad(f"decompression bomb: {exc}") from None
    except Exception as exc:  # decoders raise many types on broken bytes; all mean the same here
        raise _Bad(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None
    phash = 0
    if config.near_duplicate_distance >= 0:
        bits = np.packbits(imagehash.phash(rgb).hash.flatten())
        phash = int.from_bytes(bits.tobytes(), "big")
    sha256 = hashlib.sha256(data).hexdigest()
    target = images_dir / f"{sha256}.{ext}"
    if not target.exists():  # content-addressed: the same bytes are stored once
        tmp = images_dir / f".{sha256}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic, so a crash never leaves a half image under the final name
    return _Item(entry.id, entry.source, entry.label, sha256, ext, rgb.width, rgb.height, phash, entry.source_split)


def _listed(lines: list[str]) -> str:
    shown = "\n".join(f"  - {line}" for line in lines[:_MAX_LISTED])
    more = len(lines) - _MAX_LISTED
    return shown + (f"\n  ... and {more} more (all in report.json)" if more > 0 else "")


def _carve_counts(n: int, fractions: list[float]) -> list[int] | None:
    """Images per carved split for a class of n; at least one each while train keeps one. None: too few."""
    if n <= len(fractions):
        return None
    counts = [max(1, math.floor(n * f + 0.5)) for f in fractions]
    while sum(counts) > n - 1:
        counts[counts.index(max(counts))] -= 1
    return counts


def _assign_splits(
    items: list[_Item], config: PrepareDataConfig, rng: np.random.Generator, notes: list[str]
) -> dict[str, list[_Item]]:
    present = {item.source_split for item in items} - {None}
    fixed = config.use_source_split and bool(present)
    if fixed and "train" not in present:
        notes.append(f"the source's own split has no train part ({sorted(present)}): splits drawn at random")
        fixed = False
    splits: dict[str, list[_Item]] = {s: [] for s in SPLITS}
    pool: dict[str, list[_Item]] = defaultdict(list)
    for item in items:
        target = item.source_split if fixed else "train"
        if target == "train":
            pool[item.label].append(item)
        else:
            splits[target].append(item)
    carve = [s for s in ("validation", "test") if not (fixed and s in present)]
    fractions = {"validation": config.val_fraction, "test": config.test_fraction}
    if fixed and carve:
        notes.append(f"{' and '.join(carve)} carved from the source's train split, stratified by class")
    for label in sorted(pool):
        members = sorted(pool[label], key=lambda it: it.id)  # sorted first: the seed alone decides the order
        order = [members[i] for i in rng.permutation(len(members))]
        counts = _carve_counts(len(order), [fractions[s] for s in carve]) if carve else []
        if counts is None:
            notes.append(f"class {label!r} has only {len(order)} usable image(s) to split: all kept in train")
            counts = [0] * len(carve)
        start = 0
        for split, count in zip(carve, counts):
            splits[split].extend(order[start : start + count])
            start += count
        splits["train"].extend(order[start:])
    return splits


def _find_leaks(splits: dict[str, list[_Item]], distance: int) -> list[dict]:
    """Pairs of the same image (bytes, or phash within `distance`) in two splits; later split second."""
    pairs: list[dict] = []
    earlier: list[tuple[str, _Item]] = []
    for split in SPLITS:
        later = splits[split]
        if earlier and later:
            by_sha: dict[str, list[tuple[str, _Item]]] = defaultdict(list)
            for pair in earlier:
                by_sha[pair[1].sha256].append(pair)
            for item in later:
                for first_split, first in by_sha.get(item.sha256, ()):
                    pairs.append(_pair(first_split, first, split, item, "identical bytes", 0))
            if distance >= 0:
                first_hashes = np.array([it.phash for _, it in earlier], dtype=np.uint64)
                later_hashes = np.array([it.phash for it in later], dtype=np.uint64)
                chunk = max(1, 4_000_000 // len(first_hashes))  # bounds the distance matrix to ~4M cells
                for start in range(0, len(later_hashes), chunk):
                    block = later_hashes[start : start + chunk, None] ^ first_hashes[None, :]
                    dist = np.bitwise_count(block)
                    for li, fi in zip(*np.nonzero(dist <= distance)):
                        item, (first_split, first) = later[start + li], earlier[fi]
                        if item.sha256 != first.sha256:
                            kind = f"near-duplicate (phash distance {int(dist[li, fi])})"
                            pairs.append(_pair(first_split, first, split, item, kind, int(dist[li, fi])))
        earlier.extend((split, item) for item in later)
    order = {s: i for i, s in enumerate(SPLITS)}
    pairs.sort(key=lambda p: (order[p["b"]["split"]], p["b"]["id"], order[p["a"]["split"]], p["a"]["id"]))
    return pairs


def _pair(split_a: str, a: _Item, split_b: str, b: _Item, kind: str, distance: int) -> dict:
    def side(split: str, item: _Item) -> dict:
        return {"split": split, "id": item.id, "source": item.source, "sha256": item.sha256}

    return {"a": side(split_a, a), "b": side(split_b, b), "kind": kind, "distance": distance}


def _pair_line(pair: dict) -> str:
    a, b = pair["a"], pair["b"]
    return f"{a['split']} {a['source']} <-> {b['split']} {b['source']}: {pair['kind']}"


def _cap(splits: dict[str, list[_Item]], config: PrepareDataConfig, rng: np.random.Generator) -> int:
    caps = {"train": config.max_per_class_train, "validation": config.max_per_class_eval,
            "test": config.max_per_class_eval}
    removed = 0
    for split in SPLITS:
        cap = caps[split]
        if cap is None:
            continue
        by_class: dict[str, list[_Item]] = defaultdict(list)
        for item in splits[split]:
            by_class[item.label].append(item)
        kept: list[_Item] = []
        for label in sorted(by_class):
            members = sorted(by_class[label], key=lambda it: it.id)
            kept.extend(members[i] for i in sorted(rng.permutation(len(members))[:cap]))
        removed += len(splits[split]) - len(kept)
        splits[split] = kept
    return removed


# --------------------------------------------------------------------------------------------- output


def _prepare_out_dir(out_dir: str | Path, source: str) -> Path:
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
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OUTPUT_NAMES)
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


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _write_report(out: Path, report: dict) -> None:
    _write_json(out / "report.json", report)
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
        f"- entries: {totals['entries']}; usable {totals['usable']}; skipped {totals['skipped']}; "
        f"leakage dropped {totals['leakage_dropped']}; over the per-class caps {totals['capped']}"
    )
    per_class = report.get("per_class")
    if per_class:
        lines += ["", "## Images per split and class", "", "| class | " + " | ".join(SPLITS) + " |",
                  "| --- |" + " ---: |" * len(SPLITS)]
        for label in sorted(per_class):
            lines.append(f"| {_md(label)} | " + " | ".join(str(per_class[label].get(s, 0)) for s in SPLITS) + " |")
        lines.append("| **total** | " + " | ".join(str(report["splits"].get(s, 0)) for s in SPLITS) + " |")
    lines += ["", f"## Skipped files ({len(report['skipped'])})", ""]
    if report["skipped"]:
        lines += ["| file | reason |", "| --- | --- |"]
        lines += [f"| {_md(s['source'])} | {_md(s['reason'])} |" for s in report["skipped"]]
    else:
        lines.append("None.")
    pairs = report["leakage"]["pairs"]
    lines += ["", f"## Leakage across splits ({len(pairs)} pairs, {report['leakage']['dropped']} dropped)", ""]
    if pairs:
        lines += ["| first | second | match |", "| --- | --- | --- |"]
        lines += [
            f"| {p['a']['split']}: {_md(p['a']['source'])} | {p['b']['split']}: {_md(p['b']['source'])} "
            f"| {_md(p['kind'])} |"
            for p in pairs
        ]
    else:
        lines.append("None.")
    extra = [f"empty class {c!r} (no usable images): left out" for c in report["empty_classes"]]
    extra += report["notes"]
    if report["ignored"]:
        extra.append(f"{len(report['ignored'])} file(s) ignored (not images by extension): "
                     + ", ".join(report["ignored"][:20]) + (" ..." if len(report["ignored"]) > 20 else ""))
    if extra:
        lines += ["", "## Notes", ""] + [f"- {_md(n)}" for n in extra]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------- step


def prepare_data(config: PrepareDataConfig, out_dir: str | Path) -> PreparedDataset:
    """Build the dataset artifact in `out_dir` from `config.source`; see the module docstring."""
    if not isinstance(config, PrepareDataConfig):
        raise ValueError(f"config={config!r} must be a PrepareDataConfig; build one with PrepareDataConfig(source=...)")
    out = _prepare_out_dir(out_dir, config.source)
    report: dict = {
        "status": "running", "error": None, "source": {"kind": config.source_kind, "uri": config.source},
        "seed": config.seed, "config": dataclasses.asdict(config),
        "totals": {"entries": 0, "usable": 0, "skipped": 0, "leakage_dropped": 0, "capped": 0},
        "splits": {}, "per_class": {}, "skipped": [], "empty_classes": [],
        "leakage": {"pairs": [], "dropped": 0}, "ignored": [], "notes": [],
    }
    try:
        with contextlib.ExitStack() as stack:
            result = _run(config, out, report, stack)
    except PrepareDataError as exc:
        # Leave only the explanation behind: no manifest (so nothing mistakes this for a dataset), no images.
        report["status"], report["error"] = "failed", str(exc)
        shutil.rmtree(out / "images", ignore_errors=True)
        _write_report(out, report)
        raise
    return result


def _canonical_names(source: _Source) -> tuple[dict[str, str], dict[str, str]]:
    """source name -> canonical name, and back; two source names on one canonical name is an error."""
    canonical: dict[str, str] = {}
    source_of: dict[str, str] = {}
    for name in sorted({*source.declared, *(e.label for e in source.entries if e.label is not None)}):
        try:
            key = canonical_class_name(name)
        except ValueError:
            continue  # entries with this label are reported one by one as bad input
        if key in source_of:
            raise PrepareDataError(
                f"class names {source_of[key]!r} and {name!r} both become {key!r}; "
                "rename one of them in the source, or merge their images under one name"
            )
        canonical[name], source_of[key] = key, name
    return canonical, source_of


def _assign_ids(entries: list[_Entry], canonical: dict[str, str]) -> None:
    """Ids from source-relative paths; entries that collide (a.jpg, a.png) get a suffix from the full path."""
    seen: set[tuple[str, str | None]] = set()
    for entry in entries:
        entry.id = _make_id(entry.rel)
        if entry.problem is None and entry.label not in canonical:
            entry.problem = f"unknown label: {entry.label!r} is empty once normalised"
        if entry.problem is None and (entry.source, entry.source_split) in seen:
            entry.problem = "listed more than once"
        seen.add((entry.source, entry.source_split))
    id_counts = Counter(e.id for e in entries)
    for entry in entries:
        if id_counts[entry.id] > 1:
            suffix = hashlib.sha256(f"{entry.source}|{entry.source_split}".encode()).hexdigest()[:8]
            entry.id = f"{entry.id}-{suffix}"


def _ingest_all(
    entries: list[_Entry], canonical: dict[str, str], config: PrepareDataConfig, images_dir: Path,
    skipped: list[dict],
) -> list[_Item]:
    """Read, verify, hash and copy one file at a time: memory holds one image, whatever the dataset's size."""
    items: list[_Item] = []
    for n, entry in enumerate(entries, start=1):
        try:
            if entry.problem is not None:
                raise _Bad(entry.problem)
            entry.label = canonical[entry.label]
            items.append(_ingest(entry, config, images_dir))
        except _Bad as bad:
            if config.on_bad_input == "fail":
                raise PrepareDataError(
                    f"bad input {entry.source}: {bad}. Fix or remove it, or pass on_bad_input='skip' to "
                    "leave bad files out and list them in the report"
                ) from None
            skipped.append({"source": entry.source, "reason": str(bad)})
        if n % PROGRESS_EVERY == 0 or n == len(entries):
            log.info("prepare_data: %d/%d checked, %d skipped", n, len(entries), len(skipped))
    return items


def _write_splits(out: Path, splits: dict[str, list[_Item]], instruction: str) -> None:
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


def _run(config: PrepareDataConfig, out: Path, report: dict, stack: contextlib.ExitStack) -> PreparedDataset:
    gcs = _GcsReader()
    kind = _detect_kind(config.source) if config.source_kind == "auto" else config.source_kind
    report["source"]["kind"] = kind
    if kind == "oxford":
        source = _oxford_source(Path(config.source), config)
    elif kind == "image_folder":
        source = _image_folder_source(Path(config.source))
    elif kind == "manifest":
        source = _manifest_source(config.source, config, gcs)
    else:
        source = _hf_source(config.source, config, stack)
    report["ignored"], report["notes"] = source.ignored, source.notes
    entries = source.entries
    total = len(entries)
    report["totals"]["entries"] = total
    if total == 0:
        raise PrepareDataError(f"source {config.source!r} ({kind}) lists no images; check the path and its layout")

    canonical, source_of = _canonical_names(source)
    _assign_ids(entries, canonical)
    log.info("prepare_data: checking %d images from %s (%s)", total, config.source, kind)
    items = _ingest_all(entries, canonical, config, out / "images", report["skipped"])
    skipped = report["skipped"]
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

    split_rng, cap_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(2))
    splits = _assign_splits(items, config, split_rng, report["notes"])

    # Leakage is judged before the caps, so caps fill from clean images and the verdict does not hang on
    # which images a cap happened to keep.
    pairs = _find_leaks(splits, config.near_duplicate_distance)
    report["leakage"]["pairs"] = pairs
    if pairs and config.on_leakage == "fail":
        raise PrepareDataError(
            f"{len(pairs)} image pair(s) appear in two splits (leakage); remove one copy of each, or pass "
            "on_leakage='drop' to drop the later split's copies:\n" + _listed([_pair_line(p) for p in pairs])
        )
    leaked = {(p["b"]["split"], p["b"]["id"]) for p in pairs}
    for split in SPLITS:
        splits[split] = [it for it in splits[split] if (split, it.id) not in leaked]
    report["leakage"]["dropped"] = report["totals"]["leakage_dropped"] = len(leaked)

    report["totals"]["capped"] = _cap(splits, config, cap_rng)

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
            f"split(s) {', '.join(empty_splits)} would be empty ({len(items)} usable images over "
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

    instruction = prompts.render_instruction(classes, config.instruction_template)
    _write_splits(out, splits, instruction)

    digest = dataset_hash((s, it.id, it.label, it.sha256) for s in SPLITS for it in splits[s])
    report["status"], report["dataset_hash"] = "ok", digest
    _write_report(out, report)
    manifest = {
        "format": DATASET_FORMAT,
        "dataset_hash": digest,
        "source": {"kind": kind, "uri": config.source},
        "seed": config.seed,
        "classes": classes,
        "class_source_names": {c: source_of[c] for c in classes},
        "instruction": instruction,
        "splits": report["splits"],
        "skipped": len(skipped),
        "leakage_dropped": len(leaked),
        "created_by": f"petqlora {__version__}",
    }
    _write_json(out / "manifest.json", manifest)  # last: its presence means the artifact is complete
    log.info("prepare_data: wrote %s (%s), splits %s, %d skipped", out, digest[:12], report["splits"], len(skipped))
    return PreparedDataset(out, digest, classes, dict(report["splits"]), len(skipped))


# --------------------------------------------------------------------------------------------- entrypoint


def _parser() -> argparse.ArgumentParser:
    defaults = {f.name: f.default for f in dataclasses.fields(PrepareDataConfig)}
    parser = argparse.ArgumentParser(
        prog="python -m petqlora.data.prepare_data",
        description="Turn a pet-breed dataset into a dataset artifact with hashed, stratified splits.",
    )
    parser.add_argument("--source", required=True, help="dataset folder, parquet file, manifest, or gs:// manifest")
    parser.add_argument("--out", required=True, help="output folder (new, or one written by prepare_data)")
    parser.add_argument("--source-kind", default=defaults["source_kind"], help="|".join(SOURCE_KINDS))
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--val-fraction", type=float, default=defaults["val_fraction"])
    parser.add_argument("--test-fraction", type=float, default=defaults["test_fraction"])
    parser.add_argument("--use-source-split", action=argparse.BooleanOptionalAction,
                        default=defaults["use_source_split"], help="keep the source's own train/test split")
    parser.add_argument("--max-per-class-train", type=int, default=defaults["max_per_class_train"])
    parser.add_argument("--max-per-class-eval", type=int, default=defaults["max_per_class_eval"])
    parser.add_argument("--on-bad-input", default=defaults["on_bad_input"], help="fail|skip")
    parser.add_argument("--max-skipped-fraction", type=float, default=defaults["max_skipped_fraction"])
    parser.add_argument("--on-leakage", default=defaults["on_leakage"], help="fail|drop")
    parser.add_argument("--near-duplicate-distance", type=int, default=defaults["near_duplicate_distance"],
                        help="phash Hamming distance; -1 turns the near-duplicate check off")
    parser.add_argument("--max-image-pixels", type=int, default=defaults["max_image_pixels"])
    parser.add_argument("--instruction-template", default=defaults["instruction_template"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """`python -m petqlora.data.prepare_data`: 0 on success, 1 when the data is refused, 2 for bad arguments."""
    args = vars(_parser().parse_args(argv))
    out = args.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = PrepareDataConfig(**args)
        result = prepare_data(config, out)
    except PrepareDataError as exc:
        print(f"prepare_data: refused: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"prepare_data: bad arguments: {exc}", file=sys.stderr)
        return 2
    summary = {"path": str(result.path), "dataset_hash": result.dataset_hash, "classes": len(result.classes),
               "splits": result.splits, "skipped": result.skipped}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
