from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def score_trial(
    dataset: Input[Dataset],
    adapter: Input[Model],
    trial: dict,
    base_model: str,
    scoring: str,
    backend: dict,
    project: str,
    region: str,
    run_id: str,
    validation: Output[Artifact],
) -> dict:
    """Score trial: the trial's adapter on the validation split (the evaluate entrypoint, as a Cloud Run GPU
    job or a local subprocess), with its training speed and GPU time. A run of one trial has nothing to
    choose between: it is not scored, and pays for no extra evaluation. Returns the trial's figures."""
    import os

    from petqlora.backends import Backend
    from petqlora.logs import setup_logging
    from petqlora.trials.steps import run_score_trial

    setup_logging(os.environ)

    return run_score_trial(dataset.path, adapter.path, adapter.uri, trial, base_model=base_model, mode=scoring,
                           backend=Backend(project=project, region=region, **backend),
                           task_id=f"{run_id}-score-trial{int(trial['index'])}", out_dir=validation.path)
