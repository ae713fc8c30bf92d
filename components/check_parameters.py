from kfp import dsl
from kfp.dsl import Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def check_parameters(
    source: str,
    base_model: str,
    gemma4_baseline: str,
    gemma3_baseline: str,
    contrastive_baseline: str,
    gate_on_contrastive: bool,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    max_per_class_train: int,
    max_per_class_eval: int,
    on_bad_input: str,
    validation_sample: int,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    grad_accum: int,
    image_token_budget: int,
    max_length: int,
    train_options: dict,
    trials: list,
    force_training: bool,
    scoring: str,
    win_margin: float,
    model_name: str,
    experiment: str,
    registry: str,
    project: str,
    region: str,
    backend: dict,
    serving_image: str,
    deploy: dict,
    code_revision: str,
    report: Output[Markdown],
):
    """Check parameters: every parameter against its rule, the training config they make (and each trial's), where the GPU
    steps run (the Cloud Run jobs, the bucket of the outputs and checkpoints) and the registry, in seconds,
    before any data is read or GPU asked for. Fails the run listing every problem and its fix."""
    values = dict(locals())  # every parameter above, by name: taken before the import binds another name
    del values["report"]
    from petqlora.steps import run_check_parameters

    run_check_parameters(values, report.uri, report.path)  # report.uri lies under the run's pipeline root
