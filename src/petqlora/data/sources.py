"""The source readers of prepare_data: which kind a source is, and listing it. Oxford's native layout and
image folders are read here; manifests and Hugging Face datasets in their own modules."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

from petqlora.data.dataset import IMAGE_EXTENSIONS
from petqlora.data.entries import Entry, Listing, PrepareDataError, read_local
from petqlora.data.hf_source import hf_source
from petqlora.data.manifest_source import GcsReader, manifest_source

SOURCE_KINDS = ("auto", "oxford", "hf", "image_folder", "manifest")


def list_source(
    kind: str, source: str, use_source_split: bool, gcs: GcsReader, stack: contextlib.ExitStack
) -> Listing:
    """The entries of `source`, read as `kind` (not 'auto': see detect_kind); no image is read yet."""
    if kind == "oxford":
        return oxford_source(Path(source), use_source_split)
    if kind == "image_folder":
        return image_folder_source(Path(source))
    if kind == "manifest":
        return manifest_source(source, use_source_split, gcs)
    return hf_source(source, use_source_split, stack)


def detect_kind(source: str) -> str:
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
        return _file_kind(source, path)
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


def _file_kind(source: str, path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".csv", ".jsonl", ".json"):
        return "manifest"
    if suffix == ".parquet":
        return "hf"
    raise PrepareDataError(
        f"source {source!r} is a {suffix or 'extension-less'} file; pass a .csv/.jsonl manifest, "
        "a .parquet file, or a folder"
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


def oxford_source(root: Path, use_source_split: bool) -> Listing:
    """ROOT/images/*.jpg + ROOT/annotations/{list,trainval,test}.txt; the label is the name before '_<n>'."""
    annotations, images = root / "annotations", root / "images"
    if not images.is_dir() or not annotations.is_dir():
        raise PrepareDataError(
            f"source {str(root)!r} is not in the Oxford-IIIT Pet layout (needs images/ and annotations/); "
            "pass source_kind='auto' or the dataset's root folder"
        )
    source = Listing("oxford", [])
    split_files = {"train": annotations / "trainval.txt", "test": annotations / "test.txt"}
    if use_source_split and all(p.is_file() for p in split_files.values()):
        listing = list(split_files.items())
    else:
        if use_source_split:
            source.notes.append("annotations/trainval.txt or test.txt missing: splits drawn at random")
        list_file = annotations / "list.txt"
        listing = [(None, list_file)] if list_file.is_file() else [
            (None, p) for p in split_files.values() if p.is_file()
        ]
    for split, path in listing:
        for line_no, name, problem in _oxford_rows(path):
            where = f"annotations/{path.name}:{line_no}"
            if problem is not None:
                source.entries.append(Entry(where, where, None, lambda: b"", split, problem))
                continue
            match = re.fullmatch(r"(.+)_\d+", name)
            rel = f"images/{name}.jpg"
            file = images / f"{name}.jpg"
            entry = Entry(rel, f"{name}.jpg", match.group(1) if match else None, lambda f=file: read_local(f), split)
            if match is None:
                entry.problem = f"unknown label: image name {name!r} ({where}) is not '<Breed>_<number>'"
            source.entries.append(entry)
    return source


def image_folder_source(root: Path) -> Listing:
    """ROOT/<class name>/*.{jpg,png,...}; every sub-folder declares a class, even an empty one."""
    if not root.is_dir():
        raise PrepareDataError(
            f"source {str(root)!r} is not a folder; an image folder is ROOT/<class name>/*.jpg"
        )
    source = Listing("image_folder", [])
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
            source.entries.append(Entry(rel, rel, class_dir.name, lambda f=file: read_local(f)))
    return source
