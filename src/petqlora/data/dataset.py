"""Read a prepared dataset artifact (the output of `prepare_data`) and its images.

The layout is the contract between steps:

    <dataset_dir>/manifest.json            format, classes, instruction, split sizes, dataset hash
    <dataset_dir>/{train,validation,test}.jsonl
    <dataset_dir>/images/<sha256>.<ext>    original bytes, stored once
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from PIL import Image, ImageFile, ImageOps

DATASET_FORMAT = "petqlora.dataset/v1"
SPLITS: tuple[str, ...] = ("train", "validation", "test")
# File extensions read as images; anything else in an image folder is ignored (and reported).
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
# Decoded formats accepted, and the extension their bytes are stored under. MPO is the multi-picture
# JPEG that phones write; its first frame is a plain JPEG.
FORMAT_EXTENSIONS: dict[str, str] = {
    "JPEG": "jpg",
    "MPO": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "BMP": "bmp",
    "GIF": "gif",
}


def canonical_class_name(name: str) -> str:
    """The one spelling of a class used in prompts and metrics.

    Lowercase; underscores, hyphens and runs of whitespace become one space; stripped. Non-ASCII letters
    are kept (NFC-normalised, so the same letter typed two ways is one name).
    """
    if not isinstance(name, str):
        raise ValueError(f"class name {name!r} is a {type(name).__name__}, not a str; pass the name as text")
    # NFC again after lower(): lowering can leave a letter decomposed ("İ" -> "i" + combining dot).
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", name).lower())
    text = text.replace("_", " ").replace("-", " ")
    canonical = " ".join(text.split())
    if not canonical:
        raise ValueError(
            f"class name {name!r} is empty once underscores, hyphens and spaces are removed; "
            "give every class a name with at least one letter or digit"
        )
    return canonical


def dataset_hash(entries: Iterable[tuple[str, str, str, str]]) -> str:
    """sha256 over the sorted "split<TAB>id<TAB>label<TAB>image sha256" lines: equal contents, equal hash."""
    digest = hashlib.sha256()
    for line in sorted("\t".join(entry) + "\n" for entry in entries):
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _dir(dataset_dir: str | Path) -> Path:
    if not isinstance(dataset_dir, (str, Path)) or not str(dataset_dir):
        raise ValueError(f"dataset_dir {dataset_dir!r} must be a non-empty path; pass the prepare_data output folder")
    return Path(dataset_dir)


def read_manifest(dataset_dir: str | Path) -> dict:
    """manifest.json of a prepared dataset, checked for the format this code reads."""
    path = _dir(dataset_dir) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: {dataset_dir} is not a prepared dataset; "
            "pass the output folder of prepare_data (python -m petqlora.data.prepare_data --dataset SOURCE --output DIR)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); run prepare_data again to rewrite it") from exc
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != DATASET_FORMAT:
        raise ValueError(
            f"{path} has format {found!r}, expected {DATASET_FORMAT!r}; "
            "prepare the dataset again with this version of petqlora"
        )
    return manifest


def _split_path(dataset_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {', '.join(SPLITS)}; pass one of those names")
    path = _dir(dataset_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"split {split!r} is missing from dataset {dataset_dir} ({path.name} not found); "
            "pass the output folder of prepare_data, or prepare the dataset again"
        )
    return path


def iter_split(dataset_dir: str | Path, split: str) -> Iterator[dict]:
    """Records of one split, one at a time (the file is read line by line, never whole)."""
    # The path is checked here, not at the first next(), so a wrong split fails where it is asked for.
    path = _split_path(dataset_dir, split)

    def records() -> Iterator[dict]:
        n = 0
        with path.open(encoding="utf-8") as f:
            for line_no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}:{line_no} is not valid JSON ({exc}); prepare the dataset again"
                    ) from exc
                n += 1
                yield record
        if n == 0:
            raise ValueError(
                f"split {split!r} of dataset {dataset_dir} is empty ({path.name} has no records); "
                "prepare the dataset again with more images or other split fractions"
            )

    return records()


def read_split(dataset_dir: str | Path, split: str) -> list[dict]:
    """All records of one split; a missing or empty split is an error naming the split and the folder."""
    return list(iter_split(dataset_dir, split))


@contextlib.contextmanager
def pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """Decode under PIL's decompression-bomb limit `max_pixels`, with truncated files an error.

    PIL keeps both knobs as module globals (and some libraries flip LOAD_TRUNCATED_IMAGES on), so they
    are set for the duration of one decode and restored after.
    """
    old_limit, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            # Between 1x and 2x the limit PIL only warns; callers compare the size themselves.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_limit, old_truncated


def to_rgb(image: Image.Image) -> Image.Image:
    """EXIF orientation applied, then RGB; transparent pixels are composited onto white.

    Dropping alpha with a bare convert("RGB") keeps whatever colour the transparent pixels happen to hold,
    often black; white is what the image looks like in a viewer.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits first, convert("RGB") would clip everything above 255.
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    return image.convert("RGB")


def check_pixels(image: Image.Image, max_pixels: int | None) -> None:
    """Refuse an image over `max_pixels` from its header alone, before any pixel is decoded."""
    width, height = image.size
    if max_pixels is not None and width * height > max_pixels:
        raise Image.DecompressionBombError(
            f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels} "
            "(possible decompression bomb)"
        )


class UnsupportedFormat(ValueError):
    """An image whose format (PIL's name for it, ``.format``) is not among those accepted."""

    def __init__(self, fmt: str | None, accepted: tuple[str, ...]) -> None:
        super().__init__(f"unsupported image format {fmt} (accepted: {', '.join(accepted)})")
        self.format = fmt


def decode_image(fp: str | Path | IO[bytes], max_pixels: int | None,
                 formats: tuple[str, ...] | None = None) -> Image.Image:
    """Open, decode fully and return an RGB image with EXIF orientation applied; with `formats`, an image of
    another format is refused (UnsupportedFormat) from its header, before any pixel is decoded."""
    with pixel_limit(max_pixels), Image.open(fp) as image:
        if formats is not None and image.format not in formats:
            raise UnsupportedFormat(image.format, formats)
        check_pixels(image, max_pixels)
        image.load()
        return to_rgb(image)


def load_image(dataset_dir: str | Path, record: dict) -> Image.Image:
    """The record's image as RGB with EXIF orientation applied (the size in the record is this size)."""
    if not isinstance(record, dict) or not isinstance(record.get("image"), str):
        raise ValueError(
            f"record {record!r} has no 'image' path; pass a record from read_split or iter_split"
        )
    root = _dir(dataset_dir).resolve()
    path = (root / record["image"]).resolve()
    if not path.is_relative_to(root):
        raise ValueError(
            f"record {record.get('id')!r} points outside the dataset ({record['image']!r}); "
            "records must name images/<sha256>.<ext> inside the dataset folder"
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"image {record['image']!r} of record {record.get('id')!r} is missing from {dataset_dir}; "
            "prepare the dataset again or restore its images/ folder"
        )
    # prepare_data vetted this size, so it is the limit: a file swapped for a bigger one fails.
    width, height = record.get("width"), record.get("height")
    limit = width * height if isinstance(width, int) and isinstance(height, int) and width * height > 0 else None
    return decode_image(path, limit)
