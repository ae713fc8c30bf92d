"""The shared readers of a prepared dataset: class names, manifest, splits, images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from petqlora.data import dataset as data


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("american_pit_bull_terrier", "american pit bull terrier"),
        ("Abyssinian", "abyssinian"),
        ("Great-Pyrenees", "great pyrenees"),
        ("  Maine__Coon -- Longhair ", "maine coon longhair"),
        ("Bichon_Frisé", "bichon frisé"),
        ("Bichon_Frise\u0301", "bichon frisé"),  # decomposed accent: the same name after NFC
        ("Shiba\tInu", "shiba inu"),
    ],
)
def test_canonical_class_name(name, canonical):
    assert data.canonical_class_name(name) == canonical


@pytest.mark.parametrize("name", ["", " _-_ ", None, 3])
def test_canonical_class_name_rejects_empty_and_non_text(name):
    with pytest.raises(ValueError, match="class name"):
        data.canonical_class_name(name)


@given(st.text(min_size=1).filter(lambda s: any(c.isalnum() for c in s)))
def test_canonical_class_name_is_a_fixed_point(name):
    canonical = data.canonical_class_name(name)
    assert data.canonical_class_name(canonical) == canonical
    assert canonical == canonical.strip() and "  " not in canonical
    assert "_" not in canonical and "-" not in canonical


def test_dataset_hash_ignores_order_and_sees_every_field():
    entries = [("train", "a", "cat", "11"), ("test", "b", "dog", "22")]
    assert data.dataset_hash(entries) == data.dataset_hash(list(reversed(entries)))
    assert data.dataset_hash(entries) != data.dataset_hash([("train", "a", "dog", "11"), entries[1]])
    assert data.dataset_hash(entries) != data.dataset_hash([("validation", "a", "cat", "11"), entries[1]])


def _write_dataset(root: Path, records: dict[str, list[dict]], images: dict[str, bytes]) -> Path:
    """A prepared dataset written by hand, so these readers are tested apart from prepare_data."""
    (root / "images").mkdir(parents=True)
    for name, payload in images.items():
        (root / "images" / name).write_bytes(payload)
    for split, rows in records.items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = {"format": data.DATASET_FORMAT, "classes": ["cat"], "splits": {s: len(r) for s, r in records.items()}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _transparent_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def dataset(tmp_path) -> Path:
    records = {
        "train": [
            {"id": "a", "image": "images/rot.jpg", "label": "cat", "width": 20, "height": 40},
            {"id": "b", "image": "images/alpha.png", "label": "cat", "width": 8, "height": 8},
        ],
        "validation": [{"id": "c", "image": "images/alpha.png", "label": "cat", "width": 8, "height": 8}],
        "test": [],
    }
    return _write_dataset(tmp_path / "ds", records, {"rot.jpg": _rotated_jpeg(), "alpha.png": _transparent_png()})


def test_read_manifest(dataset, tmp_path):
    assert data.read_manifest(dataset)["classes"] == ["cat"]
    with pytest.raises(FileNotFoundError, match="is not a prepared dataset"):
        data.read_manifest(tmp_path / "nothing")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "manifest.json").write_text(json.dumps({"format": "petqlora.dataset/v0"}))
    with pytest.raises(ValueError, match="has format 'petqlora.dataset/v0', expected 'petqlora.dataset/v1'"):
        data.read_manifest(tmp_path / "old")


def test_read_split_and_iter_split(dataset):
    assert [r["id"] for r in data.read_split(dataset, "train")] == ["a", "b"]
    stream = data.iter_split(dataset, "validation")
    assert next(stream)["id"] == "c"


def test_missing_empty_or_unknown_split_is_a_clear_error(dataset):
    with pytest.raises(ValueError, match=rf"split 'test' of dataset {dataset} is empty"):
        data.read_split(dataset, "test")
    (dataset / "test.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=rf"split 'test' is missing from dataset {dataset}"):
        data.iter_split(dataset, "test")  # raised when asked, not at the first record
    with pytest.raises(ValueError, match="split 'val' is not one of train, validation, test"):
        data.read_split(dataset, "val")


def test_load_image_applies_orientation_and_returns_rgb(dataset):
    rotated, transparent = data.read_split(dataset, "train")
    image = data.load_image(dataset, rotated)
    assert image.mode == "RGB" and image.size == (20, 40)
    flat = data.load_image(dataset, transparent)
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white


def test_load_image_refuses_bad_records(dataset):
    with pytest.raises(ValueError, match="points outside the dataset"):
        data.load_image(dataset, {"id": "x", "image": "../../etc/passwd"})
    with pytest.raises(FileNotFoundError, match="image 'images/gone.png' of record 'x' is missing"):
        data.load_image(dataset, {"id": "x", "image": "images/gone.png"})
    with pytest.raises(ValueError, match="has no 'image' path"):
        data.load_image(dataset, {"id": "x"})
    # A file swapped for a far bigger one than the record says is refused before decoding.
    with pytest.raises(Image.DecompressionBombError):
        data.load_image(dataset, {"id": "x", "image": "images/rot.jpg", "width": 2, "height": 2})


def test_pixel_limit_restores_pil_globals_after_an_error():
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(RuntimeError), data.pixel_limit(10):
        assert Image.MAX_IMAGE_PIXELS == 10
        raise RuntimeError
    assert Image.MAX_IMAGE_PIXELS == before
