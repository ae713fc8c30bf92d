"""A generated "pets" image folder: the embedded default dataset.

Each breed has its own colour, shape and texture, so the classes are learnable from pixels; sizes and
aspect ratios vary so that Gemma 4 gives the images different soft-token counts; folder names follow the
Oxford-IIIT Pet convention (cats capitalised, dogs lower case, words joined by underscores) so the same
loader and canonical naming serve this set and the real one. Deterministic from the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# folder name -> (background RGB, foreground RGB, shape, texture)
BREEDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], str, str]] = {
    "Abyssinian": ((205, 120, 60), (250, 220, 170), "circle", "plain"),
    "British_Shorthair": ((90, 100, 125), (190, 200, 220), "square", "dots"),
    "Maine_Coon": ((120, 80, 40), (30, 20, 10), "triangle", "stripes"),
    "american_pit_bull_terrier": ((40, 130, 70), (240, 240, 240), "diamond", "plain"),
    "yorkshire_terrier": ((200, 190, 60), (70, 50, 140), "ellipse", "stripes"),
    "shiba_inu": ((170, 40, 60), (250, 250, 120), "cross", "dots"),
}
# The 37 breeds of Oxford-IIIT Pet as its file names spell them: a real-sized class list (its instruction is
# as long as the real one's) for tests of the whole recipe on Oxford's layout.
OXFORD_BREEDS: tuple[str, ...] = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon", "Persian",
    "Ragdoll", "Russian_Blue", "Siamese", "Sphynx", "american_bulldog", "american_pit_bull_terrier",
    "basset_hound", "beagle", "boxer", "chihuahua", "english_cocker_spaniel", "english_setter",
    "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond", "leonberger",
    "miniature_pinscher", "newfoundland", "pomeranian", "pug", "saint_bernard", "samoyed", "scottish_terrier",
    "shiba_inu", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier",
)
_SHAPES = ("circle", "square", "triangle", "diamond", "ellipse", "cross")
_TEXTURES = ("plain", "dots", "stripes")


def breed_style(breed: str) -> tuple[tuple[int, int, int], tuple[int, int, int], str, str]:
    """(background RGB, foreground RGB, shape, texture) of a breed: hand-picked for the six of the default
    set, drawn from a fixed seed for the other Oxford breeds."""
    if breed in BREEDS:
        return BREEDS[breed]
    k = OXFORD_BREEDS.index(breed)
    rng = np.random.default_rng([1234, k])
    bg, fg = (tuple(int(v) for v in rng.integers(20, 236, 3)) for _ in range(2))
    return bg, fg, _SHAPES[k % len(_SHAPES)], _TEXTURES[(k // len(_SHAPES)) % len(_TEXTURES)]


def _shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "circle":
        r = min(x1 - x0, y1 - y0) / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "ellipse":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        r = min(x1 - x0, y1 - y0) / 2
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif kind == "cross":
        w, h = (x1 - x0) / 6, (y1 - y0) / 6
        draw.rectangle((cx - w, y0, cx + w, y1), fill=fill)
        draw.rectangle((x0, cy - h, x1, cy + h), fill=fill)
    else:
        raise ValueError(f"unknown shape {kind!r}")


def _texture(arr: np.ndarray, kind: str, rng: np.random.Generator) -> None:
    h, w, _ = arr.shape
    if kind == "stripes":
        period = int(rng.integers(8, 14))
        stripes = ((np.arange(w)[None, :] + np.arange(h)[:, None]) // period) % 2 == 0
        arr[stripes] = (arr[stripes] * 0.7).astype(arr.dtype)
    elif kind == "dots":
        step = int(rng.integers(10, 16))
        yy, xx = np.mgrid[0:h, 0:w]
        dots = ((yy % step) < 3) & ((xx % step) < 3)
        arr[dots] = 255 - arr[dots]


def render_pet(breed: str, rng: np.random.Generator) -> Image.Image:
    """One image of `breed`: jittered colours, a shape at a random place and size, texture and noise."""
    bg, fg, shape, texture = breed_style(breed)
    width, height = int(rng.integers(96, 320)), int(rng.integers(96, 320))
    jitter = lambda c: tuple(int(np.clip(v + rng.integers(-25, 26), 0, 255)) for v in c)  # noqa: E731
    img = Image.new("RGB", (width, height), jitter(bg))
    draw = ImageDraw.Draw(img)
    # Background objects of random grey levels: clutter, as in photos, that no breed owns.
    for _ in range(int(rng.integers(3, 7))):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.04, 0.12) * min(width, height)
        grey = int(rng.integers(0, 256))
        draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=(grey, grey, grey))
    size = rng.uniform(0.45, 0.8)
    bw, bh = int(width * size), int(height * size)
    x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
    _shape(draw, shape, (x0, y0, x0 + bw, y0 + bh), jitter(fg))
    arr = np.asarray(img).astype(np.float64)
    # A background light gradient in a random direction, as lighting varies between photos: it makes
    # images of one breed differ in layout too, so none is a near-duplicate of another.
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)
    arr *= (0.65 + 0.5 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9))[..., None]
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    _texture(arr, texture, rng)
    noise = rng.normal(0, 8, arr.shape)
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))


def generate_synthetic_pets(out_dir: str | Path, per_class: int = 60, seed: int = 0,
                            breeds: list[str] | None = None, layout: str = "image_folder") -> Path:
    """Write `out_dir/<breed>/<breed>_<i>.jpg` for each breed (of BREEDS, or any of OXFORD_BREEDS); returns
    `out_dir`.

    `layout="oxford"` writes the Oxford-IIIT Pet native layout instead: `images/<Breed>_<i>.jpg` and
    `annotations/list.txt`, `trainval.txt`, `test.txt` (rows `Image CLASS-ID SPECIES BREED-ID`; the
    first half of each breed in trainval, the rest in test).
    """
    if layout not in ("image_folder", "oxford"):
        raise ValueError(f"layout={layout!r} must be 'image_folder' or 'oxford'")
    names = list(BREEDS) if breeds is None else list(breeds)
    unknown = [b for b in names if b not in BREEDS and b not in OXFORD_BREEDS]
    if unknown or per_class < 1:
        raise ValueError(f"synthetic dataset: unknown breeds {unknown} (known: {list(BREEDS)} and "
                         f"OXFORD_BREEDS) or per_class={per_class} < 1")
    out = Path(out_dir)
    rows: list[tuple[str, str]] = []  # (row, split)
    for b_idx, breed in enumerate(names):
        folder = out / "images" if layout == "oxford" else out / breed
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, b_idx])
        species = 1 if breed[0].isupper() else 2  # Oxford: cats are capitalised, dogs lower case
        for i in range(per_class):
            render_pet(breed, rng).save(folder / f"{breed}_{i + 1}.jpg", quality=92)
            rows.append((f"{breed}_{i + 1} {b_idx + 1} {species} {b_idx + 1}",
                         "trainval" if i < per_class // 2 else "test"))
    if layout == "oxford":
        ann = out / "annotations"
        ann.mkdir(parents=True, exist_ok=True)
        header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n#SPECIES: 1:Cat 2:Dog\n"
        (ann / "list.txt").write_text(header + "".join(r + "\n" for r, _ in rows))
        for split in ("trainval", "test"):
            (ann / f"{split}.txt").write_text("".join(r + "\n" for r, sp in rows if sp == split))
    return out
