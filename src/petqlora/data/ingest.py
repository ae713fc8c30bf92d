"""From listed entries to checked items: unique ids, and reading, verifying, hashing and copying each image,
one at a time."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from petqlora.data.dataset import FORMAT_EXTENSIONS, check_pixels, pixel_limit, to_rgb
from petqlora.data.entries import BadEntry, Entry, Item, PathEscape, PrepareDataError, make_id, refuse_listed

log = logging.getLogger(__name__)

PROGRESS_EVERY = 500  # files between progress lines on stderr


def assign_ids(entries: list[Entry], canonical: dict[str, str]) -> None:
    """Ids from source-relative paths; entries that collide (a.jpg, a.png) get a suffix from the full path."""
    seen: set[tuple[str, str | None]] = set()
    for entry in entries:
        entry.id = make_id(entry.rel)
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


def ingest_all(
    entries: list[Entry], canonical: dict[str, str], images_dir: Path, skipped: list[dict], *,
    on_bad_input: str, max_image_pixels: int, max_image_bytes: int, with_phash: bool,
) -> list[Item]:
    """Read, verify, hash and copy one file at a time: memory holds one image, whatever the dataset's size.
    Bad entries raise under on_bad_input='fail', and are appended to `skipped` under 'skip'. Paths out of
    the source's folder found while reading refuse the run under either policy, all listed at once."""
    items: list[Item] = []
    escapes: list[str] = []
    for n, entry in enumerate(entries, start=1):
        where = f"{entry.source} ({entry.where})" if entry.where else entry.source
        try:
            if entry.problem is not None:
                raise BadEntry(entry.problem)
            entry.label = canonical[entry.label]
            items.append(ingest(entry, images_dir, max_image_pixels, max_image_bytes, with_phash))
        except PathEscape as escape:
            escapes.append(f"{where}: {escape}")
        except BadEntry as bad:
            if on_bad_input == "fail":
                raise PrepareDataError(
                    f"bad input {where}: {bad}. Fix or remove it, or pass on_bad_input='skip' to "
                    "leave bad files out and list them in the report"
                ) from None
            row = {"where": entry.where} if entry.where else {}
            skipped.append({"source": entry.source, "reason": str(bad), **row})
        if n % PROGRESS_EVERY == 0 or n == len(entries):
            log.info("prepare_data: %d/%d checked, %d skipped", n, len(entries), len(skipped))
    refuse_escapes(escapes)
    return items


def refuse_escapes(escapes: list[str]) -> None:
    """Paths that leave the source's folder: a wrong source, refused under every on_bad_input policy."""
    refuse_listed(escapes,
                  f"{len(escapes)} image path(s) resolve outside the source's folder (by '..', an absolute path or "
                  "a symlink); a source that points elsewhere is a wrong source, not a bad image, so this is "
                  "refused whatever on_bad_input says. Fix the paths (or copy the images into the folder), or pass "
                  "allow_outside_root=True if the source is meant to point outside its folder")


def _decode(data: bytes, max_image_pixels: int) -> tuple[str, Image.Image, int]:
    """(file extension, RGB first frame, frame count) of fully decoded bytes; BadEntry with the reason when
    they are unusable."""
    try:
        with pixel_limit(max_image_pixels):
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in FORMAT_EXTENSIONS:
                    raise BadEntry(
                        f"unsupported image format {image.format} (accepted: {', '.join(FORMAT_EXTENSIONS)})"
                    )
                ext = FORMAT_EXTENSIONS[image.format]
                check_pixels(image, max_image_pixels)
                frames = getattr(image, "n_frames", 1)
                image.verify()
            # verify() leaves the image unusable and misses truncation: decode it for real (the first frame,
            # which is what every later step decodes too).
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                return ext, to_rgb(image), frames
    except BadEntry:
        raise
    except UnidentifiedImageError:
        raise BadEntry("not an image (PIL cannot identify its format)") from None
    except Image.DecompressionBombError as exc:
        raise BadEntry(f"decompression bomb: {exc}") from None
    except Exception as exc:  # decoders raise many types on broken bytes; all mean the same here
        raise BadEntry(f"corrupt or truncated image ({type(exc).__name__}: {exc})") from None


def _hash_int(image_hash: imagehash.ImageHash) -> int:
    return int.from_bytes(np.packbits(image_hash.hash.flatten()).tobytes(), "big")


def ingest(entry: Entry, images_dir: Path, max_image_pixels: int, max_image_bytes: int, with_phash: bool) -> Item:
    """Read, fully verify, hash and copy one image; raise BadEntry with the reason when it is unusable."""
    data = entry.read(max_image_bytes)
    if not data:
        raise BadEntry("empty file (0 bytes)")
    if len(data) > max_image_bytes:  # local files are capped before reading; bytes already in memory here
        raise BadEntry(f"{len(data)} bytes, over max_image_bytes={max_image_bytes}; shrink or remove it, or raise "
                       "max_image_bytes")
    ext, rgb, frames = _decode(data, max_image_pixels)
    phash = dhash = 0
    if with_phash:
        phash, dhash = _hash_int(imagehash.phash(rgb)), _hash_int(imagehash.dhash(rgb))
    sha256 = hashlib.sha256(data).hexdigest()
    target = images_dir / f"{sha256}.{ext}"
    if not target.exists():  # content-addressed: the same bytes are stored once
        tmp = images_dir / f".{sha256}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, target)  # atomic, so a crash never leaves a half image under the final name
    return Item(entry.id, entry.source, entry.label, sha256, ext, rgb.width, rgb.height, phash, entry.source_split,
                frames, dhash)
