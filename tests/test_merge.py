"""The merged export (gemma/merge.py) on a tiny Gemma 4 31B-like model: the merged model scores the classes as
the base model with its adapter does (float32: to rounding; bf16, the export's dtype: to bf16's rounding of
the merged weights), the folder holds safetensors only and no LoRA weight, and train_adapter writes it when
export_merged is on."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from petqlora.data import dataset as data_lib
from petqlora.evaluation.scorers import candidate_ids, score_classes, score_classes_packed
from petqlora.gemma.encoding import PromptEncoder
from petqlora.gemma.merge import export_merged
from petqlora.gemma.modeling import load_model
from petqlora.gemma.processors import load_processor
from petqlora.train.config import TrainConfig, parse_train_config, run_fingerprint
from petqlora.train.train_adapter import train_adapter

CPU = torch.device("cpu")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


@pytest.fixture(scope="module")
def base(tiny_checkpoint) -> Path:
    return tiny_checkpoint("gemma4-31b")


@pytest.fixture(scope="module")
def dataset(pets_dataset) -> Path:
    return pets_dataset(4)


@pytest.fixture(scope="module")
def scoring(base, dataset):
    """The encoder, candidates and three test images (different aspect ratios) every comparison scores."""
    manifest = data_lib.read_manifest(dataset)
    encoder = PromptEncoder(load_processor(base, "gemma4", max_soft_tokens=70), "gemma4", manifest["instruction"])
    images = [data_lib.load_image(dataset, r) for r in data_lib.read_split(dataset, "test")[:3]]
    return encoder, candidate_ids(encoder, manifest["classes"]), images


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory) -> Path:
    """A saved adapter whose B matrices are random (not zero as initialised): it really changes the scores."""
    from peft import get_peft_model

    from petqlora.gemma.lora import LoraSettings, build_lora_config

    model = load_model(base, quantize_4bit=False, device=CPU, dtype=torch.float32)
    peft_model = get_peft_model(model, build_lora_config(model, LoraSettings(r=4, alpha=8, dropout=0.0)))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.2)
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out, safe_serialization=True)
    load_processor(base, "gemma4", max_soft_tokens=70).save_pretrained(out)
    return out


def _with_adapter(base: Path, adapter: Path, dtype: torch.dtype):
    from peft import PeftModel

    model = load_model(base, quantize_4bit=False, device=CPU, dtype=dtype)
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()


def _assert_safetensors_only(folder: Path) -> None:
    files = [p.name for p in folder.rglob("*") if p.is_file()]
    weights = [f for f in files if f.endswith(".safetensors")]
    assert weights and not [f for f in files if f.endswith(PICKLE_SUFFIXES)], files
    assert "adapter_config.json" not in files and "processor_config.json" in files
    for name in weights:  # plain weights: no LoRA matrix left, the adapted layers are ordinary linears
        with safe_open(str(folder / name), "pt") as f:
            assert not [k for k in f.keys() if "lora_" in k or "base_layer" in k]


def test_the_merged_model_scores_as_base_plus_adapter_in_float32(base, adapter, scoring, tmp_path):
    encoder, candidates, images = scoring
    merged_dir = export_merged(base, adapter, tmp_path / "merged", device="cpu", dtype=torch.float32)
    merged = load_model(merged_dir, quantize_4bit=False, device=CPU, dtype=torch.float32).eval()
    reference = _with_adapter(base, adapter, torch.float32)
    plain = load_model(base, quantize_4bit=False, device=CPU, dtype=torch.float32).eval()
    for image in images[:2]:
        expected = score_classes(reference, encoder, image, candidates)
        np.testing.assert_allclose(score_classes(merged, encoder, image, candidates), expected, rtol=0, atol=1e-4)
        assert np.abs(expected - score_classes(plain, encoder, image, candidates)).max() > 1e-1  # the adapter matters
    _assert_safetensors_only(merged_dir)


def test_the_bf16_export_scores_as_base_plus_adapter_in_bf16(base, adapter, scoring, tmp_path):
    """The export's own dtype. Merging rounds W + BA once to bf16; the unmerged model in bf16 rounds W and
    computes BA beside it. Against the float32 reference, the merged model must be no further off than the
    unmerged bf16 model is (bf16's own error, 1% of these scores: sums of hundreds of nats on a random
    model), and pick the same breed for every image."""
    merged_dir = export_merged(base, adapter, tmp_path / "merged", device="cpu")
    assert json.loads((merged_dir / "config.json").read_text())["dtype"] == "bfloat16"
    _assert_bf16_scores_as_reference(merged_dir, base, adapter, scoring)
    _assert_safetensors_only(merged_dir)


def _assert_bf16_scores_as_reference(merged_dir: Path, base: Path, adapter: Path, scoring) -> None:
    # measured on this model: merged 1.84 nats off at most, unmerged bf16 2.51, of scores up to 462 nats
    encoder, candidates, images = scoring
    merged = load_model(merged_dir, quantize_4bit=False, device=CPU, dtype=torch.bfloat16).eval()
    reference = score_classes_packed(_with_adapter(base, adapter, torch.float32), encoder, images, candidates)
    unmerged = score_classes_packed(_with_adapter(base, adapter, torch.bfloat16), encoder, images, candidates)
    got = score_classes_packed(merged, encoder, images, candidates)
    np.testing.assert_allclose(got, reference, rtol=0, atol=1.5 * np.abs(unmerged - reference).max())
    np.testing.assert_allclose(got, reference, rtol=0.01)
    assert (got.argmax(1) == reference.argmax(1)).all()  # the same breed for every image


def test_export_merged_refuses_a_folder_without_an_adapter(base, tmp_path):
    with pytest.raises(ValueError, match="no adapter_config.json there"):
        export_merged(base, tmp_path, tmp_path / "merged")


def test_export_merged_is_a_bookkeeping_option():
    cfg = parse_train_config({"base_model": "m", "export_merged": True})
    assert cfg.export_merged is True and TrainConfig(base_model="m").export_merged is False
    assert run_fingerprint(cfg, "h") == run_fingerprint(TrainConfig(base_model="m"), "h")  # the adapter is the same


def test_train_adapter_writes_the_merged_export_when_asked(base, dataset, scoring, tmp_path):
    cfg = TrainConfig(base_model=str(base), lora_r=4, lora_alpha=4, lora_dropout=0.0, batch_size=4, grad_accum=1,
                      max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, image_token_budget=70, checkpoint_every=0,
                      seed=7, export_merged=True)
    train_adapter(dataset, tmp_path, cfg)
    merged_dir = tmp_path / "merged"
    _assert_safetensors_only(merged_dir)
    _assert_bf16_scores_as_reference(merged_dir, base, tmp_path / "adapter", scoring)
