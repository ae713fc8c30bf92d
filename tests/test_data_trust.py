"""prepare_data trusts nothing it is handed: files that are not regular files or are too big, paths that leave
the source's folder, one picture under two labels, copies within a class, too few classes or images, labels
the instruction cannot carry, near-typo class names; and the embedded default passes on a 37-breed Oxford
layout. Each case goes through every source kind it applies to; each refusal names the input and the fix, and
under on_bad_input='skip' every valid image beside the bad one is still ingested."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from petqlora.data import dataset as data
from petqlora.data.class_names import similar_names
from petqlora.data.hamming import near_pairs
from petqlora.data.manifest_source import GcsReader, manifest_source
from petqlora.data.prepare_data import PrepareDataConfig, PrepareDataError, prepare_data
from petqlora.data.synthetic import OXFORD_BREEDS, generate_synthetic_pets
from petqlora.gemma.validate_token_boundaries import TokenBoundaryError, ValidateConfig, validate_token_boundaries
from test_prepare_data import jpeg_bytes, noise_image
from test_storage import BUCKET, client, emulator  # noqa: F401 (fixtures: gcp-storage-emulator in-process)

ROOT = Path(__file__).resolve().parents[1]
FILE_KINDS = ["oxford", "image_folder", "csv", "jsonl"]
KINDS = FILE_KINDS + ["hf_disk", "hf_parquet"]
SPECIAL_KINDS = FILE_KINDS + ["hf_parquet"]  # a special file (FIFO, symlink) as an HF row: a path-only row
SKIP = {"max_skipped_fraction": 0.5}


def png(image: Image.Image | None = None) -> bytes:
    buffer = io.BytesIO()
    (image or noise_image()).save(buffer, "PNG")
    return buffer.getvalue()


def build(kind: str, root: Path, rows: list[tuple[str, object]]) -> tuple[str, list[str]]:
    """A source of `kind` holding `rows` of (label, payload); payload is the file's bytes, a function that
    makes the file at the path it is given (a FIFO, a symlink), or a str: the path a manifest or HF row names
    as it is (no file made). Returns the source and each row's name as prepare_data reports it."""
    root.mkdir(parents=True, exist_ok=True)
    seen: Counter = Counter()
    names, listed = [], []
    for index, (label, payload) in enumerate(rows):
        seen[label] += 1
        # Oxford and folders spell the label in the path; elsewhere the label is a field and the file name safe.
        stem = f"{label if kind in ('oxford', 'image_folder') else re.sub(r'[^A-Za-z0-9]', '_', label)}_{seen[label]}"
        rel = {"oxford": f"images/{stem}.jpg", "image_folder": f"{label}/{stem}.jpg"}.get(kind, f"imgs/{stem}.jpg")
        rel = payload if isinstance(payload, str) else rel
        names.append({"hf_parquet": f"train/{index}", "hf_disk": str(index)}.get(kind, rel))
        if callable(payload) or isinstance(payload, bytes) and not kind.startswith("hf"):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            payload(root / rel) if callable(payload) else (root / rel).write_bytes(payload)
        image = {"bytes": payload, "path": None} if isinstance(payload, bytes) else {"bytes": None, "path": rel}
        listed.append((image if kind.startswith("hf") else f"{stem} 1 1 1" if kind == "oxford" else rel, label))
    if kind == "oxford":
        (root / "annotations").mkdir()
        (root / "annotations" / "list.txt").write_text("#Image CLASS-ID SPECIES BREED-ID\n"
                                                        + "".join(f"{row}\n" for row, _ in listed))
        return str(root), names
    if kind == "csv":
        (root / "pets.csv").write_text("uri,label\n" + "".join(f'{uri},"{label}"\n' for uri, label in listed))
        return str(root / "pets.csv"), names
    if kind == "jsonl":
        (root / "pets.jsonl").write_text("".join(json.dumps({"uri": u, "label": lb}) + "\n" for u, lb in listed))
        return str(root / "pets.jsonl"), names
    if kind == "image_folder":
        return str(root), names
    import datasets
    import pyarrow.parquet as pq

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    table = datasets.Dataset.from_dict({"image": [i for i, _ in listed], "label": [lb for _, lb in listed]},
                                       features=features)
    if kind == "hf_disk":
        table.save_to_disk(str(root / "hf"))
        return str(root / "hf"), names
    pq.write_table(table.data.table, root / "pets.parquet")  # as written: path-only rows stay path-only
    return str(root / "pets.parquet"), names


def valid_rows(per_class: int = 4, labels=("Abyssinian", "Bengal")) -> list[tuple[str, bytes]]:
    """4 per class: 2 train, 1 validation, 1 test, the least the default minimums accept."""
    return [(label, png()) for label in labels for _ in range(per_class)]


def sources(out: Path) -> set[str]:
    return {r["source"] for split in data.SPLITS for r in data.read_split(out, split)}


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


@pytest.fixture
def no_hang():
    """A read that blocks (a FIFO opened for reading waits for a writer) fails the test instead of hanging it."""
    def on_alarm(*_):
        raise TimeoutError("prepare_data blocked on a read")
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------- files that are not images


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_a_fifo_named_jpg_is_skipped_or_refused_never_read(kind, tmp_path, no_hang):
    rows = valid_rows() + [("Bengal", lambda p: os.mkfifo(p))]
    source, names = build(kind, tmp_path / "src", rows)
    result = prepare_data(PrepareDataConfig(source=source, **SKIP), tmp_path / "out")
    (skipped,) = report(result.path)["skipped"]
    assert skipped["source"] == names[-1] and "is a FIFO (named pipe), not a regular file" in skipped["reason"]
    assert sources(result.path) == set(names[:-1])  # nothing valid lost
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source, on_bad_input="fail"), tmp_path / "strict")
    assert f"bad input {names[-1]}" in str(info.value) and "FIFO" in str(info.value)
    assert "on_bad_input='skip'" in str(info.value)


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_dev_zero_is_refused_as_an_escape_then_as_a_device(kind, tmp_path):
    # A symlink to /dev/zero in a folder layout; a row naming /dev/zero itself in a manifest or HF dataset.
    zero = (lambda p: os.symlink("/dev/zero", p)) if kind in ("oxford", "image_folder") else "/dev/zero"
    source, names = build(kind, tmp_path / "src", valid_rows() + [("Bengal", zero)])
    for policy in ("skip", "fail"):
        with pytest.raises(PrepareDataError) as info:
            prepare_data(PrepareDataConfig(source=source, on_bad_input=policy, **SKIP), tmp_path / policy)
        assert "resolve outside the source's folder" in str(info.value) and "/dev/zero" in str(info.value)
        assert "allow_outside_root=True" in str(info.value)
    allowed = PrepareDataConfig(source=source, allow_outside_root=True, **SKIP)
    result = prepare_data(allowed, tmp_path / "allowed")
    (skipped,) = report(result.path)["skipped"]
    assert skipped["source"] == names[-1]
    assert skipped["reason"] == "/dev/zero is a character device, not a regular file"
    assert sources(result.path) == set(names[:-1])


def test_a_source_that_is_a_fifo_is_refused(tmp_path, no_hang):
    os.mkfifo(tmp_path / "pets.csv")
    with pytest.raises(PrepareDataError, match=r"pets.csv' is a FIFO \(named pipe\); pass a folder or a file"):
        prepare_data(PrepareDataConfig(source=str(tmp_path / "pets.csv")), tmp_path / "out")


def test_a_socket_is_skipped(tmp_path):
    source, names = build("image_folder", tmp_path / "src", valid_rows())
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(Path(source) / "Bengal" / "live.jpg"))
        result = prepare_data(PrepareDataConfig(source=source, **SKIP), tmp_path / "out")
    assert report(result.path)["skipped"][0]["reason"].endswith("is a socket, not a regular file")
    assert sources(result.path) == set(names)


@pytest.mark.parametrize("kind", KINDS)
def test_an_image_over_the_byte_cap_is_not_read(kind, tmp_path):
    big = png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)))
    rows = valid_rows() + [("Bengal", big)]
    source, names = build(kind, tmp_path / "src", rows)
    cap = max(len(payload) for _, payload in rows[:-1]) + 1
    assert len(big) > cap
    result = prepare_data(PrepareDataConfig(source=source, max_image_bytes=cap, **SKIP), tmp_path / "out")
    (skipped,) = report(result.path)["skipped"]
    assert skipped["source"] == names[-1] and f"over max_image_bytes={cap}" in skipped["reason"]
    assert sources(result.path) == set(names[:-1])
    with pytest.raises(PrepareDataError, match=rf"bad input {names[-1]}.*max_image_bytes"):
        prepare_data(PrepareDataConfig(source=source, max_image_bytes=cap, on_bad_input="fail"), tmp_path / "f")


def test_a_huge_file_is_refused_from_its_size_before_any_read(tmp_path):
    source, names = build("image_folder", tmp_path / "src", valid_rows())
    with (Path(source) / "Bengal" / "huge.jpg").open("wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GiB that a whole-file read would try to hold in memory
    result = prepare_data(PrepareDataConfig(source=source, **SKIP), tmp_path / "out")
    (skipped,) = report(result.path)["skipped"]
    assert skipped["reason"].endswith(f"huge.jpg is {8 << 30} bytes, over max_image_bytes=50000000; shrink or "
                                      "remove it, or raise max_image_bytes")
    assert sources(result.path) == set(names)


# ---------------------------------------------------------------------------- paths that leave the root


@pytest.mark.parametrize("policy", ["skip", "fail"])
def test_an_oxford_row_with_a_path_is_refused_and_creates_no_class(policy, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    noise_image().save(outside / "Abyssinian_77.jpg")
    source, _ = build("oxford", tmp_path / "pets" / "a" / "b" / "c", valid_rows())
    with (Path(source) / "annotations" / "list.txt").open("a") as f:
        f.write("../../../../outside/Abyssinian_77 1 1 1\n")
    config = PrepareDataConfig(source=source, on_bad_input=policy, allow_outside_root=True)  # no opt-in helps
    with pytest.raises(PrepareDataError) as info:
        prepare_data(config, tmp_path / "out")
    assert "annotations/list.txt:10: image name '../../../../outside/Abyssinian_77' is a path" in str(info.value)
    assert report(tmp_path / "out")["status"] == "failed" and not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest_rows_outside_its_folder_are_refused_unless_allowed(kind, tmp_path):
    (tmp_path / "outside").mkdir()
    for name in ("up.png", "abs.png", "linked.png"):
        (tmp_path / "outside" / name).write_bytes(png())
    (tmp_path / "m" / "imgs").mkdir(parents=True)
    (tmp_path / "m" / "imgs" / "in.png").write_bytes(png())
    os.symlink(tmp_path / "outside" / "linked.png", tmp_path / "m" / "imgs" / "link.png")
    outside = ["../outside/up.png", str(tmp_path / "outside" / "abs.png"), "imgs/link.png"]
    inside = str(tmp_path / "m" / "imgs" / "in.png")  # absolute, but inside the folder: accepted
    rows = valid_rows() + [("Bengal", inside)] + [("Abyssinian", uri) for uri in outside]
    source, _ = build(kind, tmp_path / "m", rows)
    for policy in ("skip", "fail"):
        with pytest.raises(PrepareDataError) as info:
            prepare_data(PrepareDataConfig(source=source, on_bad_input=policy), tmp_path / policy)
        message = str(info.value)
        assert message.startswith("3 image path(s) resolve outside the source's folder")
        for line, uri in enumerate(outside, start=11 if kind == "csv" else 10):  # a CSV's header is line 1
            assert f"pets.{kind}:{line}: {uri!r} resolves to {tmp_path / 'outside'}" in message
        assert "allow_outside_root=True" in message
    result = prepare_data(PrepareDataConfig(source=source, allow_outside_root=True), tmp_path / "allowed")
    assert len(sources(result.path)) == 9 + 3


@pytest.mark.parametrize("kind", ["oxford", "image_folder"])
def test_symlinks_out_of_the_root_are_refused_and_symlinks_inside_it_followed(kind, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.jpg").write_bytes(png())
    inside = png()
    rows = valid_rows() + [("Bengal", lambda p: os.symlink(tmp_path / "elsewhere" / "x.jpg", p))]
    source, names = build(kind, tmp_path / "src", rows)
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert f"{'annotations/list.txt:10' if kind == 'oxford' else names[-1]}: " in str(info.value)
    assert str(tmp_path / "elsewhere" / "x.jpg") in str(info.value)
    # The same entry as a symlink to a file inside the root is followed.
    target = Path(source) / "kept.bin"
    target.write_bytes(inside)
    (Path(source) / names[-1]).unlink()
    (Path(source) / names[-1]).symlink_to(target)
    result = prepare_data(PrepareDataConfig(source=source), tmp_path / "ok")
    assert sources(result.path) == set(names)


def test_a_class_folder_linked_out_of_the_root_is_refused(tmp_path):
    source, _ = build("image_folder", tmp_path / "src", valid_rows())
    build("image_folder", tmp_path / "other", [("Sphynx", png()) for _ in range(4)])
    os.symlink(tmp_path / "other" / "Sphynx", Path(source) / "Sphynx")
    with pytest.raises(PrepareDataError, match=r"Sphynx/: Sphynx resolves to .*other/Sphynx, outside"):
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")


def test_an_hf_image_path_outside_the_dataset_folder_is_refused(tmp_path):
    (tmp_path / "outside.png").write_bytes(png())
    source, _ = build("hf_parquet", tmp_path / "hf", valid_rows() + [("Bengal", "../outside.png")])
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source, **SKIP), tmp_path / "out")
    assert "train/8: image path '../outside.png' resolves to" in str(info.value)
    assert "outside the dataset folder" in str(info.value) and "allow_outside_root=True" in str(info.value)
    result = prepare_data(PrepareDataConfig(source=source, allow_outside_root=True), tmp_path / "allowed")
    assert "train/8" in sources(result.path)


def test_gs_manifest_rows_outside_its_folder_are_refused(client):
    bucket = client.bucket(BUCKET)
    rows = ["uri,label"]
    for label in ("Abyssinian", "Bengal"):
        for i in range(4):
            bucket.blob(f"pets/{label}_{i}.png").upload_from_string(png())
            rows.append(f"{label}_{i}.png,{label}")
    rows += [f"gs://{BUCKET}/other/x.png,Bengal", "../x.png,Bengal", "sub/../../x.png,Bengal"]
    bucket.blob("pets/pets.csv").upload_from_string("\n".join(rows) + "\n")
    # prepare_data refuses a listing's escapes before reading any image (refuse_escapes, tested above).
    listing = manifest_source(f"gs://{BUCKET}/pets/pets.csv", False, GcsReader(client))
    assert len(listing.entries) == 8
    outside = f"outside the manifest's folder gs://{BUCKET}/pets"
    assert listing.escapes == [f"pets.csv:10: 'gs://{BUCKET}/other/x.png' resolves to gs://{BUCKET}/other/x.png, {outside}",
                               f"pets.csv:11: '../x.png' resolves to gs://{BUCKET}/pets/../x.png, {outside}",
                               f"pets.csv:12: 'sub/../../x.png' resolves to gs://{BUCKET}/pets/sub/../../x.png, {outside}"]


# ---------------------------------------------------------------------------- duplicates, before splitting


@pytest.mark.parametrize("copy", ["identical", "re-encoded"])
@pytest.mark.parametrize("kind", KINDS)
def test_the_same_picture_under_two_labels_is_refused_wherever_the_split_puts_it(kind, copy, tmp_path):
    rows = [(label, jpeg_bytes(noise_image())) for label in ("Abyssinian", "Bengal") for _ in range(4)]
    original = Image.open(io.BytesIO(rows[0][1]))
    rows.append(("Bengal", rows[0][1] if copy == "identical" else jpeg_bytes(original, quality=85)))
    source, names = build(kind, tmp_path / "src", rows)
    for seed in (0, 1, 2):  # the verdict does not depend on where the split puts the copies
        with pytest.raises(PrepareDataError) as info:
            prepare_data(PrepareDataConfig(source=source, seed=seed), tmp_path / f"out{seed}")
        message = str(info.value)
        assert message.startswith("1 picture(s) appear under two labels")
        assert f"{names[0]} (abyssinian) <-> {names[-1]} (bengal)" in message
        assert ("identical bytes" if copy == "identical" else "near-duplicate (phash distance") in message
        assert "relabel" in message
    assert "Same picture under two labels (1, refused)" in (tmp_path / "out0" / "report.md").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_copies_within_a_class_are_collapsed_and_listed(kind, tmp_path):
    rows = [(label, jpeg_bytes(noise_image())) for label in ("Abyssinian", "Bengal") for _ in range(4)]
    rows += [("Bengal", rows[4][1]), ("Abyssinian", jpeg_bytes(Image.open(io.BytesIO(rows[0][1])), quality=85))]
    source, names = build(kind, tmp_path / "src", rows)
    result = prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    collapsed = report(result.path)["duplicates"]["collapsed"]  # the first listed copy is kept
    assert {(d["kept"]["source"], d["dropped"]["source"]) for d in collapsed} == {(names[4], names[8]),
                                                                                (names[0], names[9])}
    assert sources(result.path) == set(names[:8])
    assert data.read_manifest(result.path)["duplicates_collapsed"] == 2
    markdown = (result.path / "report.md").read_text()
    assert "## Duplicates within a class (2 collapsed to one copy)" in markdown
    assert f"| bengal | {names[4]} | {names[8]} | identical bytes |" in markdown


# ---------------------------------------------------------------------------- classes and labels


@pytest.mark.parametrize("kind", KINDS)
def test_one_class_is_refused(kind, tmp_path):
    source, _ = build(kind, tmp_path / "src", valid_rows(labels=("Abyssinian",)))
    with pytest.raises(PrepareDataError, match=r"has 1 class\(es\) \('abyssinian'\); a classifier needs at least "
                                               r"two: add images of another class"):
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")


@pytest.mark.parametrize("kind", KINDS)
def test_a_class_with_too_few_images_is_refused_naming_it(kind, tmp_path):
    source, _ = build(kind, tmp_path / "src", valid_rows() + [("Sphynx", png())])
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert "1 class(es) have fewer images in a split than min_per_class_train=2 / min_per_class_eval=1" in str(info.value)
    assert "'sphynx': train 1, validation 0, test 0" in str(info.value) and "lower the minimums" in str(info.value)
    lenient = PrepareDataConfig(source=source, min_per_class_train=1, min_per_class_eval=0)
    assert prepare_data(lenient, tmp_path / "lenient").classes == ["abyssinian", "bengal", "sphynx"]


def test_caps_below_the_minimums_are_a_config_error():
    with pytest.raises(ValueError, match="max_per_class_train=1: is below min_per_class_train=2"):
        PrepareDataConfig(source="x", max_per_class_train=1)


@pytest.mark.parametrize(("kind", "label", "rule"), [
    ("csv", "Abyssinian,Bengal", "holds a comma, which separates the classes"),
    ("jsonl", "Abyssinian,Bengal", "holds a comma, which separates the classes"),
    ("hf_disk", "Abyssinian,Bengal", "holds a comma, which separates the classes"),
    ("image_folder", "Abyssinian,Bengal", "holds a comma, which separates the classes"),
    ("jsonl", "Maine\nCoon", "holds U+000A"),
    ("csv", "Maine\nCoon", "holds U+000A"),
    ("hf_parquet", "Sia\u200bmese", "holds U+200B ZERO WIDTH SPACE"),
    ("jsonl", "<eos>", "'<', which can spell a special token"),
])
def test_labels_the_instruction_cannot_carry_are_refused(kind, label, rule, tmp_path):
    source, names = build(kind, tmp_path / "src", valid_rows() + [(label, png()) for _ in range(4)])
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert f"class name {label!r} (" in str(info.value) and rule in str(info.value)
    assert "fix the label in the source" in str(info.value) or "rename the class" in str(info.value)
    assert report(tmp_path / "out")["totals"]["usable"] == 0  # refused before any image was read


@pytest.mark.parametrize("kind", KINDS)
def test_near_typo_class_names_are_refused_unless_allowed(kind, tmp_path):
    source, _ = build(kind, tmp_path / "src", valid_rows(labels=("Abyssinian", "Abysinian", "Bengal")))
    with pytest.raises(PrepareDataError) as info:
        prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert "class names 'Abysinian' (" in str(info.value) and "'Abyssinian' (" in str(info.value)
    assert "1 edit(s) apart" in str(info.value) and "min_class_name_distance=0" in str(info.value)
    allowed = prepare_data(PrepareDataConfig(source=source, min_class_name_distance=0), tmp_path / "ok")
    assert allowed.classes == ["abysinian", "abyssinian", "bengal"]


def test_similar_names_keeps_numbered_short_and_real_breed_names_apart():
    assert similar_names(["great pyrenees", "greatpyrenees", "beagle", "beagles"], 2) == [
        ("beagle", "beagles", 1), ("great pyrenees", "greatpyrenees", 0)]
    assert similar_names(["abyssinian", "abyssinain"], 2) == [("abyssinain", "abyssinian", 1)]  # a swap is 1
    assert similar_names(["type 1", "type 2", "class 1", "class 10", "cat", "bat"], 2) == []
    oxford = [data.canonical_class_name(b) for b in OXFORD_BREEDS]
    assert similar_names(oxford, 2) == []


# ---------------------------------------------------------------------------- what the report notes


def test_oxford_files_outside_the_annotations_are_listed(tmp_path):
    source, names = build("oxford", tmp_path / "src", valid_rows())
    noise_image().save(Path(source) / "images" / "Bengal_99.jpg")
    (Path(source) / "images" / "Abyssinian_100.mat").write_bytes(b"MATLAB")
    result = prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert report(result.path)["unlisted"] == ["images/Bengal_99.jpg"]
    assert "images/Abyssinian_100.mat" in report(result.path)["ignored"]
    assert "1 image file(s) on disk that the annotations do not name (not used): images/Bengal_99.jpg" in (
        result.path / "report.md").read_text()
    assert sources(result.path) == set(names)


@pytest.mark.parametrize("kind", ["image_folder", "csv", "hf_disk"])
def test_an_animated_gif_is_used_by_its_first_frame_and_listed(kind, tmp_path):
    first, second = noise_image((40, 30)), noise_image((40, 30))
    buffer = io.BytesIO()
    first.save(buffer, "GIF", save_all=True, append_images=[second])
    source, names = build(kind, tmp_path / "src", valid_rows() + [("Bengal", buffer.getvalue())])
    result = prepare_data(PrepareDataConfig(source=source), tmp_path / "out")
    assert report(result.path)["multi_frame"] == [{"source": names[-1], "frames": 2}]
    assert f"{names[-1]}: 2 frames (animated or multi-picture): the first frame is used" in (
        result.path / "report.md").read_text()
    (record,) = [r for s in data.SPLITS for r in data.read_split(result.path, s) if r["source"] == names[-1]]
    decoded = np.asarray(data.load_image(result.path, record)).astype(int)
    assert np.abs(decoded - np.asarray(first).astype(int)).mean() < 1  # 36 colours: GIF keeps them exactly


# ---------------------------------------------------------------------------- near pairs, fast and exact


@pytest.mark.parametrize("distance", [0, 1, 4, 7, 20])
def test_near_pairs_finds_exactly_the_pairs_brute_force_finds(distance):
    rng = np.random.default_rng(distance)
    hashes = rng.integers(0, 2**63, 600, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 600, dtype=np.uint64)
    for k in range(0, 600, 6):  # plant copies a few bits away
        flips = rng.choice(64, size=int(rng.integers(0, 9)), replace=False)
        hashes[k + 1] = hashes[k] ^ np.uint64(sum(1 << int(b) for b in flips))
    counts = np.bitwise_count(hashes[:, None] ^ hashes[None, :])
    expected = {(i, j) for i, j in zip(*np.nonzero(counts <= distance)) if i < j}
    assert near_pairs(hashes, distance) == expected and (distance < 4 or expected)


# ---------------------------------------------------------------------------- the embedded default on Oxford


def test_a_37_breed_oxford_layout_passes_validation_with_the_local_config(tmp_path, tiny_checkpoint):
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    assert local["models"]["base_model"] == "tiny:gemma4-31b"
    params = local["parameters"]
    source = generate_synthetic_pets(tmp_path / "pets", per_class=6, seed=0, breeds=OXFORD_BREEDS, layout="oxford")
    dataset = prepare_data(PrepareDataConfig(source=str(source)), tmp_path / "dataset")
    assert len(dataset.classes) == 37 and dataset.splits == {"train": 74, "validation": 37, "test": 111}
    model = tiny_checkpoint("gemma4-31b")
    config = ValidateConfig(base_model=str(model), image_token_budget=params["image_token_budget"],
                            max_length=params["max_length"])
    metrics = validate_token_boundaries(dataset.path, tmp_path / "check", config)
    assert metrics["problems"] == 0 and metrics["examples_checked"] == 222
    assert 512 < metrics["max_sequence_length"] <= params["max_length"]
    # The old local max_length refuses every example and names the value that fits.
    short = ValidateConfig(base_model=str(model), image_token_budget=params["image_token_budget"], max_length=512,
                           sample=4)
    with pytest.raises(TokenBoundaryError) as info:
        validate_token_boundaries(dataset.path, tmp_path / "short", short)
    checked = [json.loads(line) for line in (tmp_path / "short" / "records.jsonl").read_text().splitlines()]
    longest = max(r["sequence_length"] for r in checked)
    assert f"failed for 12 of 12 example(s)" in str(info.value)
    assert f"Fix: set max_length >= {longest} (the longest sequence checked)" in str(info.value)


def test_the_default_cloud_source_a_hub_name_is_read_as_a_hugging_face_dataset():
    from petqlora.data.sources import detect_kind
    from petqlora.params import DEFAULTS

    assert detect_kind(DEFAULTS.source) == "hf"  # timm/oxford-iiit-pet: no local path, an OWNER/NAME
    for missing in ("/data/pets", "./pets/x", "pets"):
        with pytest.raises(PrepareDataError, match="does not exist; pass an existing folder or file, or a Hugging"):
            detect_kind(missing)
