"""The Hugging Face source of prepare_data: a `save_to_disk` folder, parquet file(s), or (in the cloud) a Hub
name, with an Image column and a ClassLabel (or text) label column."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from petqlora.data.entries import BadEntry, Entry, Listing, PathEscape, PrepareDataError, split_name
from petqlora.data.local_files import read_local, resolve_inside


def _load(source: str, stack: contextlib.ExitStack) -> Any:
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return datasets.load_from_disk(str(path))
    if path.exists():
        # A private cache that dies with this call: arrow files of a local parquet copy are not worth keeping.
        cache = stack.enter_context(tempfile.TemporaryDirectory(prefix="petqlora-hf-"))
        if path.is_file():
            return datasets.load_dataset("parquet", data_files={"train": str(path)}, cache_dir=cache)
        return datasets.load_dataset("parquet", data_dir=str(path), cache_dir=cache)
    return datasets.load_dataset(source)  # a Hub name: only reachable in the cloud


def _columns(features: Any, source: str, part_name: str) -> tuple[str, str, list[str] | None]:
    """(image column, label column, ClassLabel names or None for a text label) of one split."""
    import datasets

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
    return image_col, label_col, labels[label_col].names if label_col in labels else None


def _root(source: str) -> Path | None:
    """The folder an image path of the dataset must stay in: the dataset's own (None for a Hub name)."""
    path = Path(source)
    return (path if path.is_dir() else path.parent) if path.exists() else None


def _image_bytes(value: object, root: Path | None, allow_outside_root: bool, max_bytes: int) -> bytes:
    """The row's embedded bytes, or the file its path names (inside `root`, unless allow_outside_root)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]  # already in memory: ingest checks it against the cap
        if value.get("path"):
            path = Path(value["path"])
            path = path if path.is_absolute() or root is None else root / path
            resolved, inside = resolve_inside(path, root) if root is not None else (path.resolve(), False)
            if not inside and not allow_outside_root:
                where = f"the dataset folder {root.resolve()}" if root else "a Hub dataset (no local folder)"
                raise PathEscape(f"image path {value['path']!r} resolves to {resolved}, outside {where}")
            return read_local(resolved, max_bytes)
    raise BadEntry("row has no image bytes and no image path")


def _label(entry: Entry, raw_label: object, names: list[str] | None) -> None:
    """Sets the entry's label from a ClassLabel id or a text label, or its problem when there is none."""
    if names is not None:
        if isinstance(raw_label, int) and 0 <= raw_label < len(names):
            entry.label = names[raw_label]
        else:
            entry.problem = f"unknown label id {raw_label!r} (the ClassLabel has {len(names)} names)"
    elif isinstance(raw_label, str) and raw_label.strip():
        entry.label = raw_label
    else:
        entry.problem = "empty or missing label"


def hf_source(source: str, use_source_split: bool, stack: contextlib.ExitStack,
              allow_outside_root: bool = False) -> Listing:
    """The rows of every split. A row's image is its embedded bytes, or the file its path names; a path out
    of the dataset's folder is a PathEscape when read (unless allow_outside_root)."""
    import datasets

    root = _root(source)
    loaded = _load(source, stack)
    parts = {"data": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)
    result = Listing("hf", [])
    for part_name, part in sorted(parts.items()):
        features = part.features
        image_col, label_col, names = _columns(features, source, part_name)
        for name in names or []:
            if name not in result.declared:
                result.declared.append(name)
        split = None
        if use_source_split and len(parts) > 1:
            try:
                split = split_name(part_name, f"Hugging Face dataset {source!r}")
            except BadEntry as exc:
                raise PrepareDataError(f"{exc}, or pass use_source_split=False") from None
        images = part.select_columns([image_col]).cast_column(image_col, datasets.Image(decode=False))
        ids = list(part["image_id"]) if isinstance(features.get("image_id"), datasets.Value) else None
        for i, raw_label in enumerate(part[label_col]):
            key = str(ids[i]) if ids is not None and ids[i] not in (None, "") else str(i)
            rel = key if part_name == "data" else f"{part_name}/{key}"
            read = lambda max_bytes, d=images, i=i, c=image_col: _image_bytes(  # noqa: E731 (bound per row)
                d[i][c], root, allow_outside_root, max_bytes)
            entry = Entry(rel, rel, None, read, split)
            _label(entry, raw_label, names)
            result.entries.append(entry)
    return result
