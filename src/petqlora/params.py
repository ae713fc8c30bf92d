"""The pipeline's parameters: one typed schema, the single source of each parameter's type, default,
allowed values and one-line description. pipeline.py's signature, the command line, run-local, the
components' checks and the step configs (which share fields through ``schema.same_as``) all read it.
The defaults are the real cloud recipe; configs/local.yaml overrides some for the CPU run."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from petqlora import schema
from petqlora.problems import Problems
from petqlora.schema import field

# Gemma 4's image processor accepts only these soft-token budgets per image.
IMAGE_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)
BAD_INPUT_POLICIES = ("fail", "skip")
SCORING_MODES = ("score", "generate")
BACKEND_KINDS = ("local", "cloud_run", "vertex_custom_job")
# config.json model_type of the checkpoints the contrastive baseline scores (evaluation/contrastive.py).
CONTRASTIVE_MODEL_TYPES = ("siglip", "siglip2", "clip")
PIPELINE_NAME = "petqlora-gemma4-pets"
# HOST[:PORT]/PATH[:TAG][@sha256:DIGEST], as docker reads an image reference (lowercase path).
_IMAGE_RE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+"
                       r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def image_pin_problem(image: str) -> str | None:
    """Why `image` is not pinned (a version tag other than latest, or a digest), or None when it is: a
    moving tag would let a rerun pull other code than the run it repeats."""
    match = _IMAGE_RE.match(image)
    if match is None:
        return "is not an image reference (HOST/PATH/NAME:TAG or HOST/PATH/NAME@sha256:DIGEST)"
    if match["digest"]:
        return None
    if match["tag"] is None:
        return "has no tag: pin it by a version tag or a digest"
    if match["tag"] == "latest":
        return "uses :latest, which moves: pin it by a version tag or a digest"
    return None


@dataclass(frozen=True)
class PipelineParams:
    source: str = field("timm/oxford-iiit-pet", "Images to train on: Oxford-IIIT native layout, Hugging Face "
                        "dataset (Hub name, save_to_disk or parquet), image folder, or CSV/JSONL manifest; "
                        "a local path or gs:// URI.")
    base_model: str = field("google/gemma-4-31b-it", "Gemma 4 checkpoint to fine-tune: a Hub id or a "
                            "/gcs/... checkpoint folder.")
    gemma4_baseline: str = field("google/gemma-4-31b-it", "Gemma 4 checkpoint evaluated zero-shot as a baseline.",
                                 nonempty=True, fix="give a Hub id or a /gcs/... checkpoint folder, e.g. "
                                 "google/gemma-4-31b-it")
    gemma3_baseline: str = field("google/gemma-3-27b-it", "Gemma 3 checkpoint evaluated zero-shot as a baseline.",
                                 nonempty=True, fix="give a Hub id or a /gcs/... checkpoint folder, e.g. "
                                 "google/gemma-3-27b-it")
    contrastive_baseline: str = field("google/siglip2-so400m-patch14-384", "SigLIP / SigLIP 2 / CLIP checkpoint "
                                      "evaluated zero-shot (image-text similarity) as a baseline; empty: none.")
    gate_on_contrastive: bool = field(False, "Registration must also beat the contrastive baseline by win_margin "
                                      "(otherwise it is reported, not gated).")
    seed: int = field(42, "Seed of the splits, the batch order and the LoRA initialisation.", low=0,
                      high=2**32 - 1)  # numpy's legacy seed (train_adapter) takes 32 bits
    val_fraction: float = field(0.1, "Share of each class held out for validation (when the source has no "
                                "split of its own).", low=0, high=1, low_open=True, high_open=True)
    test_fraction: float = field(0.1, "Share of each class held out for the test split every model is "
                                 "evaluated on.", low=0, high=1, low_open=True, high_open=True)
    max_per_class_train: int = field(0, "Cap on training images per class; 0 keeps them all.", low=0)
    max_per_class_eval: int = field(0, "Cap on validation and test images per class; 0 keeps them all.", low=0)
    on_bad_input: str = field("skip", "An unreadable or invalid image: skip it (listed in the data report) "
                              "or fail the run.", allowed=BAD_INPUT_POLICIES)
    validation_sample: int = field(0, "Token-boundary check of a seeded sample of this many examples per "
                                   "split; 0 checks every example.", low=0)
    lora_r: int = field(64, "LoRA rank.", low=1)
    lora_alpha: int = field(64, "LoRA alpha (scale alpha/r); alpha usually equals the rank.", low=1)
    lora_dropout: float = field(0.05, "Dropout on the LoRA input; 0 is faster.", low=0, high=1, high_open=True)
    epochs: float = field(3.0, "Passes over the training split (fractions allowed).", low=0, low_open=True)
    learning_rate: float = field(5e-5, "Peak learning rate of the warmup + cosine schedule.", low=0, high=1,
                                 low_open=True, high_open=True)
    batch_size: int = field(8, "Examples per forward pass.", low=1)
    grad_accum: int = field(2, "Forward passes per optimizer step.", low=1)
    image_token_budget: int = field(280, "Gemma 4 soft tokens per image: more is slower and sees finer detail.",
                                    allowed=IMAGE_TOKEN_BUDGETS)
    max_length: int = field(1024, "Longest training sequence in tokens; longer examples are refused, never "
                            "truncated.", low=1)
    train_options: dict = field({"checkpoint_every": 50}, "Any other training-config field as a JSON object, "
                                "e.g. {\"checkpoint_every\": 50, \"adapt_vision\": false}.")
    trials: list = field([], "Trials trained in parallel, each a JSON object overriding some of the training fields "
                         "above (image_token_budget, lora_r, lora_alpha, lora_dropout, learning_rate, epochs, "
                         "batch_size, grad_accum, max_length, train_options), e.g. [{\"image_token_budget\": 140}, "
                         "{\"lora_r\": 32}]: the best on the validation split is evaluated on the test split and may "
                         "be registered; empty: one run of the fields above.")
    force_training: bool = field(False, "Train even when the registered default version was trained on the "
                                 "same dataset with the same training config (otherwise the run skips the GPU).")
    scoring: str = field("score", "How evaluation reads an answer: score (class likelihoods, deterministic) or "
                         "generate (greedy decoding, normalized match).", allowed=SCORING_MODES)
    win_margin: float = field(0.02, "Accuracy the fine-tuned model must gain over the best baseline to be "
                              "registered (0.02 is two points).", low=0, high=1)
    model_name: str = field(PIPELINE_NAME, "Model Registry display name the adapter is registered under.")
    experiment: str = field("", "Vertex AI experiment the run adds itself to, showing its parameters and "
                            "metrics there (what `schedule --experiment` sets); empty: none.")
    registry: str = field("vertex", "Where winners are registered: vertex (Vertex AI Model Registry) or the "
                          "path of a local SQLite registry.")
    project: str = field("", "Google Cloud project of the registry and the GPU jobs.")
    region: str = field("us-central1", "Region of the registry and the GPU jobs.")
    backend: dict = field({"kind": "cloud_run", "image": "", "service_account": "", "bucket": "",
                           "hf_token_secret": ""},
                          "Where the GPU steps run: {\"kind\": \"cloud_run\", image, service_account, bucket, "
                          "hf_token_secret} (one GPU), {\"kind\": \"vertex_custom_job\", the same and machine_type, "
                          "accelerator_type, accelerator_count} (the GPUs of one machine) or {\"kind\": \"local\"}.")
    serving_image: str = field("", "Serving container image of a version registered to Vertex (required "
                               "there), pinned by version tag or digest; the local registry does not use it.",
                               fix="pass an image with a version tag or @sha256 digest, e.g. "
                               "REGION-docker.pkg.dev/PROJECT/REPO/serving:1.0.0")
    deploy: dict = field({}, "Deploy a version registered to Vertex to its own endpoint (100% of the traffic) on "
                         "this machine, e.g. {\"machine_type\": \"g4-standard-48\", \"max_replica_count\": 2}: "
                         "machine_type, accelerator_type, accelerator_count, min/max_replica_count, "
                         "service_account; {} (the default): no deployment.")
    code_revision: str = field("", "Commit of the code that ran, recorded as a label of the registered version.")

    def __post_init__(self) -> None:
        problems = Problems("pipeline parameters")
        wrong = schema.check(self, problems)
        if "serving_image" not in wrong and self.serving_image:
            problem = image_pin_problem(self.serving_image)
            if problem:
                problems.add("serving_image", self.serving_image, problem,
                             schema.rule_of(PipelineParams, "serving_image").fix)
        if "deploy" not in wrong and self.deploy:  # the machine's own rules (cloud/serving_machines.py)
            from petqlora.cloud.serving_machines import machine_problems

            problems.items.extend(f"deploy.{item}" for item in machine_problems(self.deploy))
        if "contrastive_baseline" not in wrong:
            problems.check(self.contrastive_baseline == "".join(self.contrastive_baseline.split()),
                           "contrastive_baseline", self.contrastive_baseline, "must be a checkpoint without spaces",
                           "e.g. google/siglip2-so400m-patch14-384, or empty for no contrastive baseline")
        problems.raise_if_any()


def check_contrastive_gate(values: PipelineParams, problems: Problems) -> None:
    """gate_on_contrastive needs a contrastive baseline to beat: checked with the whole run (run_checks), since
    the parameters are parsed one by one, and again by the evaluate step before any model is scored."""
    problems.check(bool(values.contrastive_baseline) or not values.gate_on_contrastive, "gate_on_contrastive",
                   values.gate_on_contrastive, "needs a contrastive_baseline to beat",
                   "set contrastive_baseline (e.g. google/siglip2-so400m-patch14-384), or gate_on_contrastive=false")


def check_vertex_registration(values: PipelineParams, problems: Problems) -> None:
    """A run that registers to Vertex needs a serving image (Vertex refuses a model with artifacts and no
    serving container): checked before a cloud run is submitted, not after its training."""
    if values.registry == "vertex" and not values.serving_image:
        problems.add("serving_image", values.serving_image, "is required when registry=vertex (Vertex Model "
                     "Registry needs a serving container for the adapter)",
                     "--param serving_image=REGION-docker.pkg.dev/PROJECT/REPO/IMAGE:TAG (pinned), or a local "
                     "registry path")


NAMES = tuple(f.name for f in dataclasses.fields(PipelineParams))
DEFAULTS = PipelineParams()


def description(name: str) -> str:
    return schema.rule_of(PipelineParams, name).help


def parse(values: Mapping[str, Any], *, text: bool = False) -> PipelineParams:
    """The pipeline parameters from a mapping (defaults for the rest): unknown names, wrong types and
    values outside their rules are all refused in one ValueError."""
    return schema.from_mapping(PipelineParams, values, "pipeline parameters", text=text)


def signature() -> inspect.Signature:
    """The pipeline function's signature: each parameter typed and defaulted as the schema says."""
    hints = schema.types_of(PipelineParams)
    return inspect.Signature([
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=hints[name],
                          default=getattr(DEFAULTS, name))
        for name in NAMES])


def docstring(summary: str) -> str:
    """``summary`` and a Google-style Args section from the schema: KFP copies it into the IR, so the
    Vertex run form shows each parameter's description."""
    args = "\n".join(f"    {name}: {description(name)}" for name in NAMES)
    return f"{summary}\n\nArgs:\n{args}\n"


def with_signature(body: Callable[[Any], None]) -> Callable[..., None]:
    """``body(p)`` as a pipeline function whose signature and docstring are the schema's: KFP reads the
    parameters' types, defaults and descriptions from them; ``body`` reads ``p.<name>``."""
    sig = signature()

    def pipeline(*args: Any, **kwargs: Any) -> None:
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        return body(types.SimpleNamespace(**bound.arguments))

    pipeline.__name__ = pipeline.__qualname__ = body.__name__
    pipeline.__module__ = body.__module__
    pipeline.__signature__ = sig
    pipeline.__doc__ = docstring((body.__doc__ or "").strip())
    return pipeline


def table() -> str:
    """The parameters as a Markdown table (name, type, default, allowed values, description): what
    `python pipeline.py params` prints."""
    hints = schema.types_of(PipelineParams)
    rows = ["| parameter | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for name in NAMES:
        rule = schema.rule_of(PipelineParams, name)
        allowed = (", ".join(map(str, rule.allowed)) if rule.allowed is not None
                   else rule.interval() if rule.low is not None or rule.high is not None else "")
        default = json.dumps(getattr(DEFAULTS, name))
        rows.append(f"| `{name}` | {hints[name].__name__} | `{default}` | {allowed} | {rule.help} |")
    return "\n".join(rows)
