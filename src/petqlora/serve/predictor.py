"""The served model: the base model and the registered adapter loaded as evaluate loads them
(`load_for_eval`: 4-bit NF4 on CUDA as trained, unquantized on CPU), scored with evaluate's class scorer and
prompt, and the scores turned into predictions. One model per process; scoring is serialized by a lock.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petqlora.serve.config import ServeConfig
from petqlora.serve.serving_info import read_serving_info

log = logging.getLogger("petqlora.serve.predictor")

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def prediction(scores: np.ndarray, classes: list[str], top_k: int, model_version: str) -> dict:
    """One instance's answer from its class log-likelihoods (evaluate's scores).

    ``breed`` is evaluate's rule: the class of highest log-likelihood (ties go to the first class).
    ``probabilities`` is the softmax over the class log-likelihoods, i.e. each class's likelihood
    renormalized over the classes alone (the model's mass on every other text is left out), for the
    ``top_k`` most likely classes, most likely first.
    """
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any() or not np.isfinite(s.max()):  # a class may be -inf (impossible), not all, nor NaN
        raise ValueError(f"the model's class scores are not all finite ({s.tolist()}): no prediction can be made "
                         "from them (a numeric overflow; on a GPU, check the quantization and dtype)")
    p = np.exp(s - s.max())
    p /= p.sum()
    order = sorted(range(len(classes)), key=lambda i: (-p[i], i))[:top_k]
    return {"breed": classes[int(np.argmax(s))], "probabilities": {classes[i]: float(p[i]) for i in order},
            "model_version": model_version}


@dataclass
class Predictor:
    model: object
    encoder: object
    family: str
    classes: list[str]
    candidates: list[list[int]]
    batch_size: int
    model_version: str
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def log_likelihoods(self, images: list) -> np.ndarray:
        """[len(images), classes] log-likelihoods, as evaluate computes them: packed batches of `batch_size`
        images (Gemma 4 and Gemma 3 alike)."""
        from petqlora.evaluation.scorers import score_classes_packed

        with self._lock:  # one model, one forward at a time
            rows = [score_classes_packed(self.model, self.encoder, images[i:i + self.batch_size], self.candidates)
                    for i in range(0, len(images), self.batch_size)]
            return np.concatenate(rows)

    def predict(self, images: list, top_k: int) -> list[dict]:
        return [prediction(row, self.classes, top_k, self.model_version) for row in self.log_likelihoods(images)]


def local_folder(uri: str, cache: Path) -> str:
    """A folder or gs:// URI as a local folder: the /gcs mount when the bucket is mounted (a pipeline step,
    a Cloud Run volume), else a download into `cache` (a Vertex endpoint copies the artifact to Cloud Storage
    and mounts nothing); a missing /gcs/BUCKET/... path is read as its gs:// URI. Anything else (a path, a
    Hub id) is returned as it is."""
    from petqlora.cloud.storage import download_dir, gcs_uri, is_gcs, local_path

    if not is_gcs(uri):
        # a /gcs/BUCKET/... path recorded where the bucket was mounted (the training job), read here without one
        if Path(uri).exists() or gcs_uri(uri) is None:
            return uri
        uri = gcs_uri(uri)
    mounted = local_path(uri)
    if Path(mounted).is_dir():
        return mounted
    log.info("downloading %s into %s (no /gcs mount)", uri, cache)
    download_dir(uri, cache)
    return str(cache)


def adapter_version(adapter_dir: str | Path) -> str:
    """adapter-sha256:<16 hex> of the adapter's weights: the same file registration's lineage hashes."""
    h = hashlib.sha256()
    with open(Path(adapter_dir) / ADAPTER_WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "adapter-sha256:" + h.hexdigest()[:16]


def load_predictor(cfg: ServeConfig) -> Predictor:
    """Load what `cfg.adapter` names (its serving.json says the base model, classes, prompt and image budget)."""
    from petqlora.evaluation.evaluate import EvalConfig, load_for_eval
    from petqlora.evaluation.scorers import candidate_ids
    from petqlora.gemma.encoding import PromptEncoder

    adapter = local_folder(cfg.adapter, Path(cfg.cache_dir) / "adapter")
    if not Path(adapter, ADAPTER_WEIGHTS).is_file():
        raise ValueError(f"adapter={cfg.adapter!r}: no {ADAPTER_WEIGHTS} in {adapter}; fix: pass train_adapter's "
                         "OUTPUT/adapter folder (the registered version's artifact URI)")
    info = read_serving_info(adapter)
    base = local_folder(cfg.base_model or info.base_model, Path(cfg.cache_dir) / "base_model")
    eval_cfg = EvalConfig(name="serve", base_model=base, adapter=adapter, image_token_budget=info.image_token_budget,
                          quantize=cfg.quantize, device=cfg.device, batch_size=cfg.batch_size)
    model, processor, family, device = load_for_eval(eval_cfg)
    if family != info.family:
        raise ValueError(f"base_model={base!r} is a {family} model, but the adapter was trained on {info.family} "
                         f"({info.base_model}); fix: pass --base-model of the trained family or leave it out")
    encoder = PromptEncoder(processor, family, info.instruction)
    version = cfg.model_version or adapter_version(adapter)
    log.info("serving %s (%s on %s, %d classes) as %s", adapter, base, device, len(info.classes), version)
    return Predictor(model=model, encoder=encoder, family=family, classes=info.classes,
                     candidates=candidate_ids(encoder, info.classes), batch_size=cfg.batch_size, model_version=version)
