"""prepare_data on small datasets built here in every supported layout, good and bad."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from petqlora.cloud import storage
from petqlora.data import dataset as data

from petqlora.gemma import prompts
from petqlora.data.prepare_data import PrepareDataConfig, PrepareDataError, main, prepare_data
from test_storage import BUCKET, client, emulator  # noqa: F401 (fixtures: gcp-storage-emulator in-process)

_seeds = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh_seeds():
    """Each test draws the same images whatever ran before it (the near-duplicate test depends on them)."""
    global _seeds
    _seeds = itertools.count(1)

OXFORD_BREEDS = [  # (file-name prefix, CLASS-ID, SPECIES 1=cat 2=dog, BREED-ID)
    ("Abyssinian", 1, 1, 1),
    ("Bengal", 2, 1, 2),
    ("american_pit_bull_terrier", 3, 2, 1),
    ("great_pyrenees", 4, 2, 2),
]


def noise_image(size: tuple[int, int] = (64, 56), seed: int | None = None) -> Image.Image:
    """Blocky random colours: every image gets a distinct perceptual hash (a flat colour would not)."""
    rng = np.random.default_rng(next(_seeds) if seed is None else seed)
    return Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize(size, Image.NEAREST)


def jpeg_bytes(image: Image.Image, quality: int = 95, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def make_oxford(root: Path, per_class: int = 8, n_test: int = 3) -> Path:
    """The native Oxford-IIIT Pet layout: images/*.jpg and annotations/{list,trainval,test}.txt."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    header = [
        "#Image CLASS-ID SPECIES BREED-ID",
        "#ID: 1:37 Class ids",
        "#SPECIES: 1:Cat 2:Dog",
        "#BREED ID: 1-25:Cat 1:12:Dog",
        "#All images with 1st letter as captial are cat images",
        "#images with small first letter are dog images",
    ]
    listing, trainval, test = list(header), [], []
    for breed, class_id, species, breed_id in OXFORD_BREEDS:
        for i in range(1, per_class + 1):
            name = f"{breed}_{i}"
            (root / "images" / f"{name}.jpg").write_bytes(jpeg_bytes(noise_image()))
            row = f"{name} {class_id} {species} {breed_id}"
            listing.append(row)
            (test if i > per_class - n_test else trainval).append(row)
    for file, rows in (("list.txt", listing), ("trainval.txt", trainval), ("test.txt", test)):
        (root / "annotations" / file).write_text("\n".join(rows) + "\n")
    return root


def add_oxford_test_image(root: Path, name: str, payload: bytes, class_id: int = 1) -> None:
    (root / "images" / f"{name}.jpg").write_bytes(payload)
    for file in ("list.txt", "test.txt"):
        with (root / "annotations" / file).open("a") as f:
            f.write(f"{name} {class_id} 1 1\n")


def make_folder(root: Path, classes: dict[str, int]) -> Path:
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            noise_image().save(root / name / f"img_{i:03d}.png")
    return root


def add_bad_inputs(class_dir: Path) -> None:
    """Three unusable files, a non-image by extension, and five odd-but-valid images."""
    (class_dir / "truncated.jpg").write_bytes(jpeg_bytes(noise_image((128, 128)))[:700])
    (class_dir / "empty.jpg").write_bytes(b"")
    (class_dir / "notes.jpg").write_text("this is not an image\n")
    (class_dir / "readme.txt").write_text("ignored: not an image extension\n")
    noise_image().convert("L").save(class_dir / "grey.png")
    (class_dir / "cmyk.jpg").write_bytes(jpeg_bytes(noise_image().convert("CMYK")))
    rgba = noise_image().convert("RGBA")
    rgba.putpixel((0, 0), (10, 20, 30, 0))  # fully transparent corner
    rgba.save(class_dir / "rgba.png")
    noise_image().convert("P").save(class_dir / "palette.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    (class_dir / "rotated.jpg").write_bytes(jpeg_bytes(noise_image((60, 30)), exif=exif.tobytes()))


def all_records(out: Path) -> dict[str, list[dict]]:
    return {split: data.read_split(out, split) for split in data.SPLITS}


def by_source(out: Path) -> dict[str, dict]:
    return {r["source"]: r for records in all_records(out).values() for r in records}


# ------------------------------------------------------------------------------------------- Oxford


def test_oxford_native_layout_uses_the_official_split(tmp_path):
    root = make_oxford(tmp_path / "pets")
    result = prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    out = result.path
    manifest = data.read_manifest(out)

    assert manifest["source"] == {"kind": "oxford", "uri": str(root)}
    assert manifest["classes"] == ["abyssinian", "american pit bull terrier", "bengal", "great pyrenees"]
    assert manifest["class_source_names"]["american pit bull terrier"] == "american_pit_bull_terrier"
    assert manifest["class_source_names"]["abyssinian"] == "Abyssinian"
    assert manifest["instruction"] == prompts.render_instruction(manifest["classes"])
    assert manifest["splits"] == {"train": 16, "validation": 4, "test": 12} == result.splits
    assert manifest["created_by"].startswith("petqlora ")
    assert manifest["skipped"] == 0 and manifest["leakage_dropped"] == 0

    records = all_records(out)
    test_rows = (root / "annotations" / "test.txt").read_text().split("\n")
    assert {r["id"] for r in records["test"]} == {row.split()[0] for row in test_rows if row}
    for record in records["validation"]:  # carved from trainval, one per class
        assert int(record["id"].rsplit("_", 1)[1]) <= 5
    assert sorted(r["label"] for r in records["validation"]) == manifest["classes"]

    for split, rows in records.items():
        for record in rows:
            image_bytes = (out / record["image"]).read_bytes()
            assert record["image"] == f"images/{record['sha256']}.jpg"
            assert hashlib.sha256(image_bytes).hexdigest() == record["sha256"]
            assert image_bytes == (root / record["source"]).read_bytes()  # copied, not re-encoded
            assert (record["width"], record["height"]) == (64, 56)
            assert record["messages"] == prompts.build_messages(manifest["instruction"], record["label"])
    entries = [(s, r["id"], r["label"], r["sha256"]) for s, rows in records.items() for r in rows]
    assert manifest["dataset_hash"] == data.dataset_hash(entries) == result.dataset_hash
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "ok"
    assert report["per_class"]["bengal"] == {"train": 4, "validation": 1, "test": 3}
    assert "| bengal | 4 | 1 | 3 |" in (out / "report.md").read_text()


def test_oxford_random_stratified_split_when_source_split_is_off(tmp_path):
    root = make_oxford(tmp_path / "pets")
    config = PrepareDataConfig(source=str(root), use_source_split=False)
    result = prepare_data(config, tmp_path / "out")
    assert result.splits == {"train": 24, "validation": 4, "test": 4}
    records = all_records(result.path)
    for split in ("validation", "test"):
        assert sorted(r["label"] for r in records[split]) == result.classes  # one per class
    test_numbers = {int(r["id"].rsplit("_", 1)[1]) for r in records["test"]}
    assert len(test_numbers) > 0 and result.dataset_hash != prepare_data(
        PrepareDataConfig(source=str(root)), tmp_path / "official"
    ).dataset_hash


def test_leakage_across_splits_fails_naming_the_pairs(tmp_path):
    root = make_oxford(tmp_path / "pets")
    add_oxford_test_image(root, "Abyssinian_90", (root / "images" / "Abyssinian_1.jpg").read_bytes())
    reencoded = jpeg_bytes(Image.open(root / "images" / "Bengal_2.jpg"), quality=90)
    add_oxford_test_image(root, "Bengal_91", reencoded, class_id=2)

    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    message = str(info.value)
    assert "2 image pair(s) appear in two splits" in message
    assert "images/Abyssinian_1.jpg <-> test images/Abyssinian_90.jpg: identical bytes" in message
    assert "images/Bengal_2.jpg <-> test images/Bengal_91.jpg: near-duplicate" in message
    assert "on_leakage='drop'" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    failed = json.loads((tmp_path / "out" / "report.json").read_text())
    assert failed["status"] == "failed" and len(failed["leakage"]["pairs"]) == 2

    # Byte-identical copies are caught even with the perceptual check off.
    with pytest.raises(PrepareDataError, match=r"1 image pair\(s\)"):
        prepare_data(PrepareDataConfig(source=str(root), near_duplicate_distance=-1), tmp_path / "exact")


def test_leakage_drop_removes_the_later_copies_and_counts_them(tmp_path):
    root = make_oxford(tmp_path / "pets")
    add_oxford_test_image(root, "Abyssinian_90", (root / "images" / "Abyssinian_1.jpg").read_bytes())
    reencoded = jpeg_bytes(Image.open(root / "images" / "Bengal_2.jpg"), quality=90)
    add_oxford_test_image(root, "Bengal_91", reencoded, class_id=2)

    result = prepare_data(PrepareDataConfig(source=str(root), on_leakage="drop"), tmp_path / "out")
    manifest = data.read_manifest(result.path)
    assert manifest["leakage_dropped"] == 2
    assert manifest["splits"]["test"] == 12
    test_ids = {r["id"] for r in data.read_split(result.path, "test")}
    assert "Abyssinian_90" not in test_ids and "Bengal_91" not in test_ids
    report = json.loads((result.path / "report.json").read_text())
    assert report["leakage"]["dropped"] == 2
    assert {p["b"]["id"] for p in report["leakage"]["pairs"]} == {"Abyssinian_90", "Bengal_91"}


# ------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_are_skipped_with_reasons_and_odd_images_are_accepted(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 10, "Bengal": 10, "great_pyrenees": 10})
    add_bad_inputs(root / "Abyssinian")
    config = PrepareDataConfig(source=str(root), max_skipped_fraction=0.2)
    result = prepare_data(config, tmp_path / "out")

    assert result.skipped == 3
    report = json.loads((result.path / "report.json").read_text())
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"Abyssinian/truncated.jpg", "Abyssinian/empty.jpg", "Abyssinian/notes.jpg"}
    assert "truncated" in reasons["Abyssinian/truncated.jpg"]
    assert reasons["Abyssinian/empty.jpg"] == "empty file (0 bytes)"
    assert "not an image" in reasons["Abyssinian/notes.jpg"]
    assert report["ignored"] == ["Abyssinian/readme.txt"]
    markdown = (result.path / "report.md").read_text()
    assert "| Abyssinian/empty.jpg | empty file (0 bytes) |" in markdown

    records = by_source(result.path)
    assert sum(result.splits.values()) == 30 + 5
    for name in ("grey.png", "cmyk.jpg", "rgba.png", "palette.png", "rotated.jpg"):
        image = data.load_image(result.path, records[f"Abyssinian/{name}"])
        assert image.mode == "RGB"
    rotated = records["Abyssinian/rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (30, 60)  # EXIF orientation 6 applied
    assert data.load_image(result.path, rotated).size == (30, 60)
    # Only images of kept records are stored.
    stored = {p.name for p in (result.path / "images").iterdir()}
    assert stored == {Path(r["image"]).name for r in records.values()}


def test_fail_policy_raises_on_the_first_bad_file(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 5, "Bengal": 5})
    add_bad_inputs(root / "Abyssinian")
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=str(root), on_bad_input="fail"), tmp_path / "out")
    message = str(info.value)
    assert message.startswith("bad input Abyssinian/empty.jpg: empty file (0 bytes)")
    assert "on_bad_input='skip'" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "images").exists()
    assert "empty file" in (tmp_path / "out" / "report.md").read_text()


def test_too_many_skipped_files_fails_listing_them(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 10, "Bengal": 10, "great_pyrenees": 10})
    add_bad_inputs(root / "Abyssinian")  # 3 bad of 38 is 7.9%, over the default 5%
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    message = str(info.value)
    assert "3 of 38 files (7.9%) are unusable, more than max_skipped_fraction=0.05" in message
    for name in ("truncated.jpg", "empty.jpg", "notes.jpg"):
        assert f"Abyssinian/{name}: " in message


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 6, "Bengal": 6})
    noise_image((70, 70)).save(root / "Bengal" / "big.png")  # 4900 px: between the limit and twice it
    noise_image((100, 100)).save(root / "Bengal" / "huge.png")  # 10000 px: PIL itself refuses it
    limit_before = Image.MAX_IMAGE_PIXELS
    config = PrepareDataConfig(source=str(root), max_image_pixels=4000, max_skipped_fraction=0.2)
    result = prepare_data(config, tmp_path / "out")
    reasons = {s["source"]: s["reason"] for s in json.loads((result.path / "report.json").read_text())["skipped"]}
    assert set(reasons) == {"Bengal/big.png", "Bengal/huge.png"}
    assert all(reason.startswith("decompression bomb") for reason in reasons.values())
    assert Image.MAX_IMAGE_PIXELS == limit_before  # the global is restored


# ------------------------------------------------------------------------------------------- splits


def test_same_input_and_seed_give_the_same_dataset(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 10, "Bengal": 10, "great_pyrenees": 10})
    first = prepare_data(PrepareDataConfig(source=str(root), seed=1), tmp_path / "a")
    again = prepare_data(PrepareDataConfig(source=str(root), seed=1), tmp_path / "b")
    other = prepare_data(PrepareDataConfig(source=str(root), seed=2), tmp_path / "c")
    assert first.dataset_hash == again.dataset_hash
    for split in data.SPLITS:
        assert (first.path / f"{split}.jsonl").read_bytes() == (again.path / f"{split}.jsonl").read_bytes()
    assert other.dataset_hash != first.dataset_hash
    assert {r["id"] for r in data.read_split(other.path, "validation")} != {
        r["id"] for r in data.read_split(first.path, "validation")
    }
    assert other.splits == first.splits == {"train": 24, "validation": 3, "test": 3}


def test_per_class_caps(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 20, "Bengal": 14, "great_pyrenees": 20})
    config = PrepareDataConfig(source=str(root), max_per_class_train=5, max_per_class_eval=1)
    result = prepare_data(config, tmp_path / "out")
    assert result.splits == {"train": 15, "validation": 3, "test": 3}
    report = json.loads((result.path / "report.json").read_text())
    assert report["per_class"]["bengal"] == {"train": 5, "validation": 1, "test": 1}
    assert report["totals"]["capped"] == 54 - 21
    assert len(list((result.path / "images").iterdir())) == 21


def test_empty_split_is_an_error(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 2, "Bengal": 2})
    with pytest.raises(PrepareDataError, match=r"split\(s\) validation, test would be empty"):
        prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")


# ------------------------------------------------------------------------------------------- classes


def test_class_names_that_collapse_to_one_name_are_an_error(tmp_path):
    root = make_folder(tmp_path / "pets", {"Great-Pyrenees": 3, "great_pyrenees": 3, "Bengal": 3})
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    assert "'Great-Pyrenees' and 'great_pyrenees' both become 'great pyrenees'" in str(info.value)


def test_non_ascii_class_names_are_kept(tmp_path):
    root = make_folder(tmp_path / "pets", {"Bichon_Frisé": 5, "Bengal": 5})
    result = prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    assert result.classes == ["bengal", "bichon frisé"]
    assert data.read_manifest(result.path)["class_source_names"]["bichon frisé"] == "Bichon_Frisé"
    assert all(r["id"].isascii() for r in data.read_split(result.path, "train"))


def test_empty_class_fails_or_is_left_out(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 5, "Bengal": 5})
    (root / "Sphynx").mkdir()
    with pytest.raises(PrepareDataError, match="'sphynx' have no usable images"):
        prepare_data(PrepareDataConfig(source=str(root), on_bad_input="fail"), tmp_path / "strict")
    result = prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "out")
    assert result.classes == ["abyssinian", "bengal"]
    assert json.loads((result.path / "report.json").read_text())["empty_classes"] == ["sphynx"]


# ------------------------------------------------------------------------------------------- manifests


def test_csv_manifest_with_relative_absolute_missing_and_gs_rows(tmp_path, monkeypatch):
    # No credentials: the gs:// row must be skipped with the reason, quickly and offline.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    (tmp_path / "imgs").mkdir()
    rows = ["uri,label"]
    for label in ("Abyssinian", "Great-Pyrenees"):
        for i in range(6):
            path = tmp_path / "imgs" / f"{label}_{i}.png"
            noise_image().save(path)
            rows.append(f"imgs/{path.name},{label}" if i % 2 else f"{path},{label}")
    rows += ["imgs/missing.png,Abyssinian", "imgs/Abyssinian_0.png,", "gs://pets-bucket/cat.jpg,Abyssinian"]
    manifest = tmp_path / "pets.csv"
    manifest.write_text("\n".join(rows) + "\n")

    # A gs:// row in a local manifest points outside the manifest's folder: read only when allowed
    # (without it the run is refused, tests/test_data_trust.py).
    config = PrepareDataConfig(source=str(manifest), max_skipped_fraction=0.25, allow_outside_root=True)
    result = prepare_data(config, tmp_path / "out")
    assert result.classes == ["abyssinian", "great pyrenees"]
    assert sum(result.splits.values()) == 12 and result.skipped == 3
    reasons = {s["source"]: s["reason"] for s in json.loads((result.path / "report.json").read_text())["skipped"]}
    assert reasons["imgs/missing.png"].startswith("missing file")
    assert reasons["imgs/Abyssinian_0.png"].startswith("empty or missing label")
    assert reasons["gs://pets-bucket/cat.jpg"].startswith("no access to Cloud Storage")
    manifest_json = data.read_manifest(result.path)
    assert manifest_json["source"]["kind"] == "manifest"
    assert manifest_json["class_source_names"] == {"abyssinian": "Abyssinian", "great pyrenees": "Great-Pyrenees"}


def test_gs_manifest_and_images_through_the_storage_emulator(tmp_path, client, monkeypatch):
    # The default client, made fresh against the emulator (client sets STORAGE_EMULATOR_HOST) and put back after.
    monkeypatch.setattr(storage, "_default_client", None)
    bucket = client.bucket(BUCKET)
    rows = ["uri,label"]
    for label in ("Abyssinian", "Bengal"):
        for i in range(5):
            buffer = io.BytesIO()
            noise_image().save(buffer, "PNG")
            bucket.blob(f"pets/{label}_{i}.png").upload_from_string(buffer.getvalue())
            rows.append(f"{label}_{i}.png,{label}" if i % 2 else f"gs://{BUCKET}/pets/{label}_{i}.png,{label}")
    rows.append("missing.png,Bengal")
    bucket.blob("pets/pets.csv").upload_from_string("\n".join(rows) + "\n")

    config = PrepareDataConfig(source=f"gs://{BUCKET}/pets/pets.csv", max_skipped_fraction=0.1)
    result = prepare_data(config, tmp_path / "out")
    assert result.classes == ["abyssinian", "bengal"]
    assert sum(result.splits.values()) == 10 and result.skipped == 1
    (skipped,) = json.loads((result.path / "report.json").read_text())["skipped"]
    assert skipped["source"] == "missing.png"
    assert skipped["reason"].startswith(f"Cannot read gs://{BUCKET}/pets/missing.png: no such object")
    with pytest.raises(PrepareDataError, match=rf"cannot read manifest: Cannot read gs://{BUCKET}/nope.csv"):
        prepare_data(PrepareDataConfig(source=f"gs://{BUCKET}/nope.csv"), tmp_path / "o2")


def test_jsonl_manifest_with_its_own_split_column(tmp_path):
    lines = []
    for label in ("Abyssinian", "Bengal"):
        for i in range(6):
            name = f"{label}_{i}.png"
            noise_image().save(tmp_path / name)
            lines.append(json.dumps({"uri": name, "label": label, "split": "test" if i >= 4 else "train"}))
    lines.append("{not json")
    manifest = tmp_path / "pets.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    result = prepare_data(PrepareDataConfig(source=str(manifest), max_skipped_fraction=0.1), tmp_path / "out")
    assert result.skipped == 1
    assert {r["source"] for r in data.read_split(result.path, "test")} == {
        f"{label}_{i}.png" for label in ("Abyssinian", "Bengal") for i in (4, 5)
    }
    assert result.splits == {"train": 6, "validation": 2, "test": 4}


# ------------------------------------------------------------------------------------------- Hugging Face


def _hf_dataset(names: list[str], counts: dict[int, int]):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    rows = {"image": [], "label": []}
    for label, count in counts.items():
        for _ in range(count):
            buffer = io.BytesIO()
            noise_image().save(buffer, "PNG")
            rows["image"].append({"bytes": buffer.getvalue(), "path": None})
            rows["label"].append(label)
    return datasets.Dataset.from_dict(rows, features=features)


def test_hf_save_to_disk_with_class_label_and_its_own_split(tmp_path):
    import datasets

    names = ["Abyssinian", "Great-Pyrenees", "american_pit_bull_terrier", "Sphynx"]  # Sphynx has no rows
    train = _hf_dataset(names, {0: 6, 1: 6, 2: 6})
    bad = datasets.Dataset.from_dict(
        {"image": [train[0]["image"]], "label": [-1]}, features=train.features
    )  # -1: the ClassLabel value for "no label"
    train = datasets.concatenate_datasets([train, bad])
    test = _hf_dataset(names, {0: 2, 1: 2, 2: 2})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "hf"))

    result = prepare_data(PrepareDataConfig(source=str(tmp_path / "hf"), max_skipped_fraction=0.1), tmp_path / "out")
    manifest = data.read_manifest(result.path)
    assert manifest["source"]["kind"] == "hf"
    assert manifest["classes"] == ["abyssinian", "american pit bull terrier", "great pyrenees"]
    assert manifest["class_source_names"]["great pyrenees"] == "Great-Pyrenees"
    assert result.splits == {"train": 15, "validation": 3, "test": 6}
    assert all(r["source"].startswith("test/") for r in data.read_split(result.path, "test"))
    report = json.loads((result.path / "report.json").read_text())
    assert report["skipped"] == [{"source": "train/18", "reason": "unknown label id -1 (the ClassLabel has 4 names)"}]
    assert report["empty_classes"] == ["sphynx"]


def test_hf_parquet_file(tmp_path):
    _hf_dataset(["Abyssinian", "Bengal"], {0: 5, 1: 5}).to_parquet(str(tmp_path / "pets.parquet"))
    result = prepare_data(PrepareDataConfig(source=str(tmp_path / "pets.parquet")), tmp_path / "out")
    assert data.read_manifest(result.path)["source"]["kind"] == "hf"
    assert result.classes == ["abyssinian", "bengal"]
    assert result.splits == {"train": 6, "validation": 2, "test": 2}


# ------------------------------------------------------------------------------------------- arguments


def test_config_lists_every_wrong_field_in_one_error():
    with pytest.raises(ValueError) as info:
        PrepareDataConfig(
            source="",
            source_kind="zip",
            seed=-1,
            val_fraction=1.5,
            max_per_class_train=0,
            on_bad_input="ignore",
            on_leakage="warn",
            near_duplicate_distance=99,
            instruction_template="Which breed?",
        )
    message = str(info.value)
    assert message.startswith("invalid PrepareDataConfig:") and message.count("\n  - ") == 9
    for field in ("source=", "source_kind=", "seed=", "val_fraction=", "max_per_class_train=", "on_bad_input=",
                  "on_leakage=", "near_duplicate_distance=", "instruction_template="):
        assert f"  - {field}" in message
    with pytest.raises(ValueError, match=r"val_fraction \+ test_fraction=1.0: must be below 1"):
        PrepareDataConfig(source="x", val_fraction=0.5, test_fraction=0.5)


def test_output_folder_rules(tmp_path):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 5, "Bengal": 5})
    with pytest.raises(ValueError, match="overlaps source"):
        prepare_data(PrepareDataConfig(source=str(root)), root / "prepared")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("someone else's")
    with pytest.raises(ValueError, match=r"holds files prepare_data did not write \(keep.txt\)"):
        prepare_data(PrepareDataConfig(source=str(root)), tmp_path / "busy")
    with pytest.raises(PrepareDataError, match="does not exist"):
        prepare_data(PrepareDataConfig(source=str(tmp_path / "nowhere")), tmp_path / "out")
    # A retried task writes over its earlier attempt: same result, no stale images.
    first = prepare_data(PrepareDataConfig(source=str(root), seed=3), tmp_path / "out")
    (first.path / "images" / "stale.png").write_bytes(b"x")
    again = prepare_data(PrepareDataConfig(source=str(root), seed=3), tmp_path / "out")
    assert again.dataset_hash == first.dataset_hash
    assert not (again.path / "images" / "stale.png").exists()


def test_entrypoint(tmp_path, capsys):
    root = make_folder(tmp_path / "pets", {"Abyssinian": 5, "Bengal": 5})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"seed": 7}))
    assert main(["--dataset", str(root), "--output", str(tmp_path / "out"), "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset_hash"] == data.read_manifest(tmp_path / "out")["dataset_hash"]
    assert data.read_manifest(tmp_path / "out")["seed"] == 7
    config.write_text(json.dumps({"val_fraction": 2, "on_leakage": "x"}))
    assert main(["--dataset", str(root), "--output", str(tmp_path / "o2"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "val_fraction=2.0" in err and "on_leakage='x'" in err
    shutil.copy(root / "Bengal" / "img_000.png", root / "Abyssinian" / "copy.png")
    (root / "Abyssinian" / "zero.png").write_bytes(b"")
    config.write_text(json.dumps({"on_bad_input": "fail"}))
    args = ["--dataset", str(root), "--output", str(tmp_path / "o3"), "--config", str(config)]
    assert main(args) == 1
    assert "bad input Abyssinian/zero.png: empty file" in capsys.readouterr().err
