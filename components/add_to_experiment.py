from kfp import dsl

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def add_to_experiment(experiment: str, project: str, region: str, pipeline_job: str) -> str:
    """Add to experiment: this run joins the Vertex AI experiment `experiment` (created if new), which then
    shows the run's parameters and its metrics (accuracy and macro-F1 of the fine-tuned model and of both
    baselines). Scheduled runs need this step: Vertex creates them, so no client can add them when they are
    submitted. Returns the experiment's ML Metadata context."""
    from petqlora.cloud.vertex_experiments import add_run_to_experiment

    return add_run_to_experiment(pipeline_job=pipeline_job, experiment=experiment, project=project, region=region)
