from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def decide_training(
    dataset: Input[Dataset],
    base_model: str,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int,
    image_token_budget: int,
    max_length: int,
    seed: int,
    train_options: dict,
    trials: list,
    force_training: bool,
    registry: str,
    model_name: str,
    project: str,
    region: str,
    run_id: str,
    decision: Output[Artifact],
    summary: Output[Markdown],
) -> str:
    """Train or skip: returns "skip" when the registry's default version was trained on this dataset (same
    hash) with this training config (same fingerprint; for a sweep, the same trials), so the GPU would train
    the same adapter again;
    "train" otherwise, or always with force_training. The reason is in the summary. Takes the same training
    values as train_adapter; run_id keeps it out of any cache (the registry changes between runs)."""
    from petqlora.steps import run_decide_training
    from petqlora.train.config import train_config_values

    # as check_parameters built it: a pipeline parameter repeated in train_options is refused, not overridden
    config = train_config_values(
        train_options, base_model=base_model, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum,
        image_token_budget=image_token_budget, max_length=max_length, seed=seed)
    result = run_decide_training(dataset.path, config, trials=trials, force_training=force_training, registry=registry,
                                 model_name=model_name, project=project, region=region,
                                 decision_json=decision.path, summary_md=summary.path)
    print(f"run {run_id}: {result['reason']}")
    decision.metadata.update({k: result[k] for k in ("train", "reason", "dataset_hash", "config_fingerprint")})
    decision.metadata["champion"] = result["champion"] or ""
    return "train" if result["train"] else "skip"
