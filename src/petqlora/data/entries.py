"""What the prepare_data steps hand each other: a listed entry, a checked item, a source's listing, the
errors, and the small helpers every source reader shares (ids, split names, listing problems)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

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
MAX_LISTED = 50  # lines of a list shown in an error message; report.json has them all


class PrepareDataError(ValueError):
    """The data cannot become a dataset artifact (bad input under the fail policy, leakage, empty split...)."""


class BadEntry(Exception):
    """One entry cannot be used; the message is the reason shown to the user."""


class PathEscape(BadEntry):
    """An entry's path resolves outside its source's root: the source is wrong, not the image, so this
    refuses the run under every on_bad_input policy."""


@dataclass
class Entry:
    """A listed image, before its bytes are read."""

    source: str  # source-relative path or uri: shown in reports and kept in the record
    rel: str  # what the id is made from
    label: str | None  # source class name
    read: Callable[[int], bytes]  # the bytes, given the most it may read
    source_split: str | None = None
    problem: str | None = None  # known bad before reading (no label, malformed row...)
    id: str = ""
    where: str | None = None  # the row that lists it (file:line), when it is not the file itself


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
    frames: int = 1  # >1: an animated or multi-picture file, of which the first frame is used
    dhash: int = 0  # with phash: what near-duplicates are judged on (data.hamming)


@dataclass
class Listing:
    """What a source reader found: the entries (labels only, no pixels) and what it has to say about them."""

    kind: str
    entries: list[Entry]
    declared: list[str] = field(default_factory=list)  # class names the source defines (folders, ClassLabel)
    ignored: list[str] = field(default_factory=list)  # files that are not images by extension
    notes: list[str] = field(default_factory=list)
    escapes: list[str] = field(default_factory=list)  # "where: path and where it resolves", refused
    unlisted: list[str] = field(default_factory=list)  # image files the source's index does not name


def no_bytes(max_bytes: int) -> bytes:
    """The read of an entry known bad before reading: never called."""
    return b""


def refuse_listed(lines: list[str], message: str) -> None:
    """One PrepareDataError for every line at once: ``message``, then the lines (see :func:`listed`)."""
    if lines:
        raise PrepareDataError(f"{message}:\n{listed(lines)}")


def listed(lines: list[str]) -> str:
    """At most MAX_LISTED lines as a bulleted list for an error message, and how many more there are."""
    shown = "\n".join(f"  - {line}" for line in lines[:MAX_LISTED])
    more = len(lines) - MAX_LISTED
    return shown + (f"\n  ... and {more} more (all in report.json)" if more > 0 else "")


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
