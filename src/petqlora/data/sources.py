"""The source readers of prepare_data: which kind a source is, and listing it. Oxford's native layout and
image folders are read here; manifests and Hugging Face datasets in their own modules."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path

from petqlora.data.dataset import IMAGE_EXTENSIONS
from petqlora.data.entries import BadEntry, Entry, Listing, PrepareDataError, no_bytes
from petqlora.data.hf_source import hf_source
from petqlora.data.local_files import file_kind, read_index, read_local, resolve_inside
from petqlora.data.manifest_source import GcsReader, manifest_source

SOURCE_KINDS = ("auto", "oxford", "hf", "image_folder", "manifest")


def list_source(
    kind: str, source: str, use_source_split: bool, gcs: GcsReader, stack: contextlib.ExitStack,
    allow_outside_root: bool = False,
) -> Listing:
    """The entries of `source`, read as `kind` (not 'auto': see detect_kind); no image is read yet. Paths
    that resolve outside the source's folder are listed in `escapes` (unless allow_outside_root)."""
    if kind == "oxford":
        return oxford_source(Path(source), use_source_split, allow_outside_root)
    if kind == "image_folder":
        return image_folder_source(Path(source), allow_outside_root)
    if kind == "manifest":
        return manifest_source(source, use_source_split, gcs, allow_outside_root)
    return hf_source(source, use_source_split, stack, allow_outside_root)


# A Hugging Face Hub dataset name, OWNER/NAME: what a source that is no local path may be.
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


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
        if HUB_NAME.match(source):  # the pipeline's default, timm/oxford-iiit-pet: only the cloud reaches the Hub
            return "hf"
        raise PrepareDataError(
            f"source {source!r} does not exist; pass an existing folder or file, or a Hugging Face Hub name "
            "(OWNER/NAME)"
        )
    if path.is_file():
        return _file_kind(source, path)
    if not path.is_dir():  # stat, never open: a FIFO blocks, a device reads forever
        raise PrepareDataError(f"source {source!r} is {file_kind(path.stat().st_mode)}; pass a folder or a file")
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
    for line_no, line in enumerate(read_index(path).splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        fields = text.split()
        if len(fields) < 2 or not fields[1].isdigit():
            yield line_no, None, f"malformed row {text!r} (expected 'Image CLASS-ID SPECIES BREED-ID')"
            continue
        yield line_no, fields[0], None


def _escape(where: str, shown: str, resolved: Path, root: Path) -> str:
    return f"{where}: {shown} resolves to {resolved}, outside the source folder {root.resolve()}"


def _local_entry(listing: Listing, file: Path, root: Path, allow_outside_root: bool, **entry) -> None:
    """Appends the entry of `file`, read from its resolved path; an escape from `root` goes to listing.escapes."""
    try:
        resolved, inside = resolve_inside(file, root)
    except BadEntry as exc:
        listing.entries.append(Entry(**{**entry, "problem": entry.get("problem") or str(exc)}, read=no_bytes))
        return
    if not inside and not allow_outside_root:
        shown = file.relative_to(root).as_posix()
        listing.escapes.append(_escape(entry.get("where") or entry["source"], shown, resolved, root))
        return
    listing.entries.append(Entry(**entry, read=lambda max_bytes, f=resolved: read_local(f, max_bytes)))


def oxford_source(root: Path, use_source_split: bool, allow_outside_root: bool = False) -> Listing:
    """ROOT/images/*.jpg + ROOT/annotations/{list,trainval,test}.txt; the label is the name before '_<n>'.
    Image files the annotations do not name are listed in `unlisted` (they are not used)."""
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
    named: set[str] = set()
    for split, path in listing:
        for line_no, name, problem in _oxford_rows(path):
            where = f"annotations/{path.name}:{line_no}"
            if problem is not None:
                source.entries.append(Entry(where, where, None, no_bytes, split, problem, where=where))
                continue
            if name in (".", "..") or "/" in name or "\\" in name:
                # The format names a file in images/; a path is a wrong annotation, whatever it points at.
                source.escapes.append(f"{where}: image name {name!r} is a path, not a file name in images/")
                continue
            named.add(f"{name}.jpg")
            match = re.fullmatch(r"(.+)_\d+", name)
            entry = dict(source=f"images/{name}.jpg", rel=f"{name}.jpg", label=match.group(1) if match else None,
                         source_split=split, where=where)
            if match is None:
                entry["problem"] = f"unknown label: image name {name!r} ({where}) is not '<Breed>_<number>'"
            _local_entry(source, images / f"{name}.jpg", root, allow_outside_root, **entry)
    for file in sorted(images.iterdir()):
        if file.name.startswith(".") or file.name in named:
            continue
        rel = f"images/{file.name}"
        (source.unlisted if file.suffix.lower() in IMAGE_EXTENSIONS else source.ignored).append(rel)
    return source


def image_folder_source(root: Path, allow_outside_root: bool = False) -> Listing:
    """ROOT/<class name>/*.{jpg,png,...}; every sub-folder declares a class, even an empty one. Symlinks
    are followed and must stay inside ROOT (unless allow_outside_root)."""
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
        resolved, inside = resolve_inside(class_dir, root)
        if not inside and not allow_outside_root:
            source.escapes.append(_escape(f"{class_dir.name}/", class_dir.name, resolved, root))
            continue
        source.declared.append(class_dir.name)
        for file in sorted(class_dir.iterdir()):
            rel = f"{class_dir.name}/{file.name}"
            if file.name.startswith("."):
                continue
            if file.is_dir() or file.suffix.lower() not in IMAGE_EXTENSIONS:
                source.ignored.append(rel)
                continue
            _local_entry(source, file, root, allow_outside_root, source=rel, rel=rel, label=class_dir.name)
    return source
