"""What the prepare_data steps hand each other: a listed entry, a checked item, a source's listing, the two
errors, and the small helpers every source reader shares (local reads, ids, split names)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from petqlora.data.dataset import IMAGE_EXTENSIONS

# Split names sources use, mapped to ours (Hugging Face datasets vary; Oxford calls its train part trainval).
SPLIT_ALIASES = {
    "train": "train",
    "trainval": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class PrepareDataError(ValueError):
    """The data cannot become a dataset artifact (bad input under the fail policy, leakage, empty split...)."""


class BadEntry(Exception):
    """One entry cannot be used; the message is the reason shown to the user."""


@dataclass
class Entry:
    """A listed image, before its bytes are read."""

    source: str  # source-relative path or uri: shown in reports and kept in the record
    rel: str  # what the id is made from
    label: str | None  # source class name
    read: Callable[[], bytes]
    source_split: str | None = None
    problem: str | None = None  # known bad before reading (no label, malformed row...)
    id: str = ""


@dataclass
class Item:
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
class Listing:
    """What a source reader found: the entries (labels only, no pixels) and what it has to say about them."""

    kind: str
    entries: list[Entry]
    declared: list[str] = field(default_factory=list)  # class names the source defines (folders, ClassLabel)
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension
    notes: list[str] = field(default_factory=list)


def read_local(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise BadEntry(f"missing file {path}") from None
    except IsADirectoryError:
        raise BadEntry(f"{path} is a directory, not an image file") from None
    except OSError as exc:
        raise BadEntry(f"cannot read {path} ({exc.strerror or exc})") from None


def make_id(rel: str) -> str:
    """A filesystem-safe id from a source-relative path: extension dropped, '/' -> '__', ASCII only."""
    path = PurePosixPath(rel.removeprefix("gs://"))
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        path = path.with_suffix("")
    parts = [_SAFE.sub("_", part).strip("_.") for part in path.parts if part not in ("/", ".", "..")]
    return "__".join(p for p in parts if p) or "image"


def split_name(name: str, where: str) -> str:
    mapped = SPLIT_ALIASES.get(name.strip().lower())
    if mapped is None:
        raise BadEntry(f"unknown split {name!r} in {where}; use one of {', '.join(SPLIT_ALIASES)}")
    return mapped
