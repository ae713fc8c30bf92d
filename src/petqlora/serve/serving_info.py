"""serving.json: what the server needs beside the adapter's weights, written into the adapter folder by
train_adapter, so that the registered folder alone can be served (``--adapter DIR`` is enough).

    {"format": "petqlora.serving/v1", "base_model": ..., "family": ..., "classes": [...],
     "instruction": ..., "image_token_budget": ..., "dataset_hash": ...}

The classes and instruction are the dataset manifest's (the prompt evaluate scores with); the base model
and image budget are the training config's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

SERVING_FILE = "serving.json"
SERVING_FORMAT = "petqlora.serving/v1"


@dataclass(frozen=True)
class ServingInfo:
    base_model: str
    family: str
    classes: list[str]
    instruction: str
    image_token_budget: int
    dataset_hash: str | None = None


def write_serving_info(adapter_dir: str | Path, *, base_model: str, family: str, manifest: dict,
                       image_token_budget: int) -> Path:
    """ADAPTER_DIR/serving.json from the training config's values and the dataset manifest; returns its path."""
    info = ServingInfo(base_model=base_model, family=family, classes=list(manifest["classes"]),
                       instruction=manifest["instruction"], image_token_budget=image_token_budget,
                       dataset_hash=manifest.get("dataset_hash"))
    path = Path(adapter_dir) / SERVING_FILE
    path.write_text(json.dumps({"format": SERVING_FORMAT, **asdict(info)}, indent=1))
    return path


def read_serving_info(adapter_dir: str | Path) -> ServingInfo:
    """The adapter folder's serving.json, checked; a missing or malformed one is a ValueError naming the fix."""
    path = Path(adapter_dir) / SERVING_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such file; the adapter folder must be a train_adapter output of this "
                         f"version (it writes {SERVING_FILE} beside the weights); fix: train it again, or pass "
                         "the adapter/ folder itself, not its parent")
    try:
        values = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not readable JSON ({exc}); fix: train the adapter again") from None
    if not isinstance(values, dict) or values.get("format") != SERVING_FORMAT:
        raise ValueError(f"{path}: format {values.get('format') if isinstance(values, dict) else None!r} is not "
                         f"{SERVING_FORMAT!r}; fix: serve it with the version of petqlora that trained it")
    fields = {k: values.get(k) for k in ServingInfo.__dataclass_fields__}
    wrong = [k for k, ok in [("base_model", isinstance(fields["base_model"], str) and fields["base_model"]),
                             ("family", fields["family"] in ("gemma4", "gemma3")),
                             ("classes", isinstance(fields["classes"], list) and len(fields["classes"]) >= 2
                              and all(isinstance(c, str) and c for c in fields["classes"])),
                             ("instruction", isinstance(fields["instruction"], str) and fields["instruction"]),
                             ("image_token_budget", isinstance(fields["image_token_budget"], int))] if not ok]
    if wrong:
        raise ValueError(f"{path}: {', '.join(wrong)} missing or malformed; fix: train the adapter again")
    return ServingInfo(**fields)
