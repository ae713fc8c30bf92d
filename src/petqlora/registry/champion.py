"""Does this run need the GPU? The registry's default version (the champion) carries, as labels, the hash of
the dataset it was trained on and the fingerprint of its training config; a run on the same dataset with the
same config would train the same adapter again, so it skips training and says why.

The config fingerprint covers every TrainConfig field that can change the trained adapter (not checkpoint
or log cadence: `train.config.run_fingerprint`) and the package version (the training code). Labels go
through Vertex's label rules in both registries, so values are compared after the same sanitising."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from petqlora import __version__
from petqlora.cloud.vertex_common import to_vertex_labels

__all__ = ["CONFIG_LABEL", "DATASET_LABEL", "Champion", "config_fingerprint", "find_champion", "training_decision"]

DATASET_LABEL = "dataset_hash"
CONFIG_LABEL = "config_fingerprint"


@dataclass(frozen=True)
class Champion:
    """The registry's default version of a model: how to name it, and its labels."""

    ref: str
    labels: dict[str, str]


def config_fingerprint(train_config: dict) -> str:
    """sha256 of the training config as the trainer parses it (every field that can change the adapter)
    and the package version. `train_config` is what train_adapter is given: KFP or JSON values."""
    from petqlora.train.config import parse_train_config, run_fingerprint

    values = run_fingerprint(parse_train_config(train_config), None)["config"]
    payload = json.dumps({"train_config": values, "petqlora": __version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def find_champion(registry: str, model_name: str, *, project: str = "", region: str = "", credentials=None,
                  api_endpoint: str | None = None) -> Champion | None:
    """The default version of `model_name` in `registry` ("vertex" or a local SQLite path), or None."""
    if registry == "vertex":
        from petqlora.cloud.vertex_common import vertex_session
        from petqlora.cloud.vertex_models import find_model

        with vertex_session(project, region, credentials, api_endpoint):
            model = find_model(model_name, project=project, region=region, credentials=credentials,
                               fix="rename the extra ones so the champion is unambiguous")
            if model is None:
                return None
            return Champion(f"{model.resource_name}@{model.version_id}", dict(model.labels or {}))
    if not registry or not Path(registry).exists():
        return None
    from petqlora.registry.local import LocalRegistry

    version = LocalRegistry(registry).default_version(model_name)
    return Champion(version.ref, dict(version.labels)) if version else None


def training_decision(*, dataset_hash: str, fingerprint: str, champion: Champion | None,
                      force_training: bool, model_name: str) -> tuple[bool, str]:
    """(train?, the reason in one sentence). Training is skipped only when the champion records both this
    dataset hash and this config fingerprint, and force_training is off."""
    if force_training:
        return True, "training: force_training=true (the champion is not consulted)"
    if champion is None:
        return True, f"training: no version of {model_name} is registered yet"
    expected = to_vertex_labels({DATASET_LABEL: dataset_hash, CONFIG_LABEL: fingerprint})
    differs = [f"{key} {(champion.labels.get(key) or '(not recorded)')[:14]} there, {value[:12]} now"
               for key, value in expected.items() if champion.labels.get(key) != value]
    if differs:
        return True, f"training: the data or the training config changed since {champion.ref} ({'; '.join(differs)})"
    return False, (f"training skipped: the registered default version {champion.ref} was trained on this "
                   f"dataset ({dataset_hash[:12]}) with this training config ({fingerprint[:12]}); "
                   "set force_training=true to train anyway")
