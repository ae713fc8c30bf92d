from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def plan_trials(
    dataset: Input[Dataset],
    base_model: str,
    seed: int,
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
    sample: int,
    token_reports: Output[Artifact],
    summary: Output[Markdown],
) -> list:
    """Plan trials: one item per trial (the run's training fields with the trial's overrides; a single item of
    the run's own fields when trials is empty), which the trials loop trains in parallel. The token boundaries
    of every image_token_budget / max_length a trial uses besides the run's own are checked here, on the same
    examples as validate_token_boundaries, so a bad one fails the run before any GPU is asked for."""
    values = dict(locals())  # the parameters above, by name: taken before the import binds another name
    for name in ("dataset", "trials", "sample", "token_reports", "summary"):
        del values[name]
    from petqlora.trials.steps import run_plan_trials

    items, reports = run_plan_trials(trials, values, dataset_dir=dataset.path, sample=sample,
                                     token_dir=token_reports.path, summary_md=summary.path)
    token_reports.metadata.update({"reports": reports, "dataset_hash": dataset.metadata.get("dataset_hash", "")})
    return items
