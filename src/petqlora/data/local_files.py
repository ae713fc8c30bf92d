"""Local reads that trust nothing: a path is resolved (every symlink followed) and kept inside its source's
root, and only a regular file under the byte cap is read, through a non-blocking open, so that a device,
a FIFO or a socket named `.jpg` is refused instead of hanging the step or filling its memory."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from petqlora.data.entries import BadEntry, PrepareDataError

# What a path is, when it is not a regular file: the name shown in the refusal.
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)


# An annotation file or manifest bigger than this is not an index of images (a million rows is ~100 MB).
INDEX_MAX_BYTES = 1 << 30


def file_kind(mode: int) -> str | None:
    """None for a regular file; otherwise what it is, in words."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def resolve_inside(path: Path, root: Path) -> tuple[Path, bool]:
    """(`path` with every symlink resolved, whether it lies inside `root`, itself resolved).

    A symlink loop raises BadEntry: it names no file at all.
    """
    try:
        resolved = path.resolve()
        return resolved, resolved.is_relative_to(root.resolve())
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop, on Python < 3.13
        raise BadEntry(f"cannot resolve {path} ({exc})") from None


def _too_big(path: Path, size: int | str, max_bytes: int) -> BadEntry:
    return BadEntry(f"{path} is {size} bytes, over max_image_bytes={max_bytes}; shrink or remove it, "
                    "or raise max_image_bytes")


def read_local(path: Path, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` (at most `max_bytes`); BadEntry saying what it is otherwise."""
    # stat before open: opening a device can act (a tape rewinds, a watchdog arms), a socket cannot be
    # opened at all, and a FIFO blocks the open until a writer comes.
    try:
        kind = file_kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise BadEntry(f"missing file {path}") from None
    except OSError as exc:
        raise BadEntry(f"cannot read {path} ({exc.strerror or exc})") from None
    if kind is not None:
        raise BadEntry(f"{path} is {kind}, not a regular file")
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the stat still cannot hang the open. O_NOFOLLOW: the
        # path was resolved when listed, so a symlink here was put there since; it is not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise BadEntry(f"{path} became a symbolic link after it was listed; list the dataset again") from None
        raise BadEntry(f"cannot read {path} ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())  # the file opened, not the one looked at before
        kind = file_kind(info.st_mode)
        if kind is not None:
            raise BadEntry(f"{path} is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise _too_big(path, info.st_size, max_bytes)
        data = f.read(max_bytes + 1)  # +1: a file that grew past the cap since the stat is still caught
    if len(data) > max_bytes:
        raise _too_big(path, f"more than {max_bytes}", max_bytes)
    return data


def read_index(path: Path) -> str:
    """The UTF-8 text of an index file (Oxford annotations, a manifest), read as carefully as an image."""
    try:
        raw = read_local(path, INDEX_MAX_BYTES)
    except BadEntry as exc:
        raise PrepareDataError(f"cannot read {path}: {exc}") from None
    return decode_index(raw, str(path))


def decode_index(raw: bytes, name: str) -> str:
    """An index file's bytes as text; -sig because spreadsheet exports start with a byte-order mark."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PrepareDataError(f"{name} is not UTF-8 text ({exc}); save it as UTF-8") from None
