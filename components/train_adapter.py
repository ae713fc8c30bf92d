from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def train_adapter(
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
    backend: dict,
    project: str,
    region: str,
    run_id: str,
    adapter: Output[Model],
    metrics: Output[Metrics],
    trial: int = 0,
):
    """Train adapter: QLoRA (4-bit NF4, LoRA) on an NVIDIA RTX PRO 6000 as a Cloud Run Job execution, or a
    local subprocess of the same entrypoint. Resumes from its checkpoints when retried. train_options
    holds any other TrainConfig field (e.g. checkpoint_every, adapt_vision). trial: the trial's index in a sweep
    (its own Cloud Run task id, so parallel trials never re-attach to each other's execution)."""
    import os

    from petqlora.backends import Backend
    from petqlora.logs import setup_logging
    from petqlora.steps import run_train_adapter
    from petqlora.train.config import train_config_values

    setup_logging(os.environ)

    # as check_parameters built it: a pipeline parameter repeated in train_options is refused, not overridden
    config = train_config_values(
        train_options, base_model=base_model, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, grad_accum=grad_accum,
        image_token_budget=image_token_budget, max_length=max_length, seed=seed)
    values = run_train_adapter(dataset.path, adapter.path, config, Backend(project=project, region=region, **backend),
                               task_id=f"{run_id}-train" + (f"-trial{trial}" if trial else ""))
    adapter.metadata.update({"sha256": values["adapter_sha256"], "base_model": base_model, "lora_r": lora_r,
                             "config_fingerprint": values["config_fingerprint"],
                             "lora_target_modules": len(values["lora_target_modules"])})
    for key in ("final_loss", "steps", "tokens_per_s", "wall_time_s", "peak_memory_gib"):
        if values.get(key) is not None:
            metrics.log_metric(key, values[key])
