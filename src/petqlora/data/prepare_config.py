"""The prepare_data step's configuration: one typed schema of what users may set, checked on construction.
Its own module so that the step (`prepare_data`) and its report (`prepare_report`) both read it without
importing each other."""

from __future__ import annotations

from dataclasses import dataclass

from petqlora import schema
from petqlora.data.sources import SOURCE_KINDS
from petqlora.gemma import prompts
from petqlora.params import PipelineParams
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as

__all__ = ["LEAKAGE_POLICIES", "PIPELINE_FIELDS", "PrepareDataConfig", "pipeline_options"]

LEAKAGE_POLICIES = ("fail", "drop")
# The pipeline parameters the step takes besides the source (its component's inputs).
PIPELINE_FIELDS = ("seed", "val_fraction", "test_fraction", "max_per_class_train", "max_per_class_eval",
                   "on_bad_input")


def pipeline_options(**values) -> dict:
    """The config's values from the pipeline parameters ``PIPELINE_FIELDS``, as the prepare_data step builds it
    and the run checks build it before the run: a cap of 0 there is no cap (None) here."""
    caps = ("max_per_class_train", "max_per_class_eval")
    return {**values, **{name: values[name] or None for name in caps}}


def _shared(name: str):
    return same_as(PipelineParams, name)


@dataclass(frozen=True)
class PrepareDataConfig:
    source: str = required("Path or gs:// uri of the dataset (gs:// only for a manifest; Vertex mounts buckets "
                           "under /gcs/).", nonempty=True)
    source_kind: str = field("auto", "What the source is; auto detects it.", allowed=SOURCE_KINDS)
    seed: int = _shared("seed")  # same input + seed -> same splits
    val_fraction: float = _shared("val_fraction")  # of the source's train part when it has its own split
    test_fraction: float = _shared("test_fraction")  # unused when the source has its own test split
    use_source_split: bool = field(True, "Keep the source's own train/test split (Oxford, HF, a manifest column).")
    max_per_class_train: int | None = field(None, "Cap on training images per class; None: no cap (19 gives the "
                                            "published 700-image run over 37 breeds).", low=1)
    max_per_class_eval: int | None = field(None, "Cap on validation and test images per class; None: no cap.", low=1)
    on_bad_input: str = _shared("on_bad_input")  # fail: the first bad file raises; skip: listed in the report
    max_skipped_fraction: float = field(0.05, "Skip more than this share and the step fails with the list.",
                                        low=0, high=1)
    on_leakage: str = field("fail", "An image in two splits: fail, or drop the later split's copy.",
                            allowed=LEAKAGE_POLICIES)
    near_duplicate_distance: int = field(4, "Hamming distance within which two images are near duplicates (their "
                                         "phash and dhash both); -1 checks identical bytes only.", low=-1, high=32,
                                         fix="keep it small: above about 10 unrelated images start to match")
    max_image_pixels: int = field(40_000_000, "Decompression-bomb guard, checked before decoding.", low=1)
    max_image_bytes: int = field(50_000_000, "Largest image file read, in bytes, checked before reading (a photo "
                                 "is a few MB; Oxford's are under 1 MB).", low=1)
    allow_outside_root: bool = field(False, "Read image paths that resolve outside the source's folder: a "
                                     "manifest's absolute, ../ or other-bucket rows, symlinks, HF image paths. "
                                     "Off, any such path refuses the run (a wrong source, not a bad image).")
    min_per_class_train: int = field(2, "Fewest training images a class may have; 0 turns the check off.", low=0)
    min_per_class_eval: int = field(1, "Fewest validation images, and test images, a class may have; 0 turns "
                                    "the check off.", low=0)
    min_class_name_distance: int = field(2, "Class names fewer edits apart than this (canonical, spaces ignored) "
                                         "are refused as likely typos, e.g. Abysinian beside Abyssinian; 0 allows "
                                         "them.", low=0, high=10)
    instruction_template: str = field(prompts.DEFAULT_INSTRUCTION, "The instruction; '{classes}' becomes the "
                                      "class list.")

    def __post_init__(self) -> None:
        p = Problems("PrepareDataConfig")
        wrong = schema.check(self, p)
        if not {"val_fraction", "test_fraction"} & wrong:
            p.check(self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction",
                    self.val_fraction + self.test_fraction, "must be below 1 so that train keeps images",
                    "lower one of them")
        if "instruction_template" not in wrong:
            _check_instruction(p, self.instruction_template)
        for cap_name, min_name in (("max_per_class_train", "min_per_class_train"),
                                   ("max_per_class_eval", "min_per_class_eval")):
            cap_value, min_value = getattr(self, cap_name), getattr(self, min_name)
            if not {cap_name, min_name} & wrong and cap_value is not None:
                p.check(cap_value >= min_value, cap_name, cap_value, f"is below {min_name}={min_value}: every "
                        "class would be refused", f"raise {cap_name} or lower {min_name}")
        p.raise_if_any()


def _check_instruction(p: Problems, template: str) -> None:
    try:
        prompts.render_instruction(["a", "b"], template)
    except (ValueError, KeyError, IndexError) as exc:
        p.add("instruction_template", template, f"does not render ({exc})",
              "it needs exactly one '{classes}' placeholder and '{{'/'}}' for literal braces")
