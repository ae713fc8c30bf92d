from typing import List, NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Markdown, Metrics, Model, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def select_trial(
    results: List[dict],
    adapters: Input[List[Model]],
    token_report: Input[Artifact],
    trial_token_reports: Input[Artifact],
    adapter: Output[Model],
    winner_token_report: Output[Artifact],
    selection: Output[Artifact],
    metrics: Output[Metrics],
    summary: Output[Markdown],
) -> NamedTuple("Outputs", [("image_token_budget", int), ("winner", int)]):
    """Select trial: the trial with the best validation accuracy (a tie goes to the cheaper: smaller image
    token budget, then less GPU time, then smaller rank), the only one evaluated on the test split. Its
    adapter and the token report of its budget are this step's outputs (the trial's own files, not copies);
    every trial's figures are in the summary table and the metrics (trialN_validation_accuracy, ...)."""
    from collections import namedtuple

    from petqlora.steps import log_metrics
    from petqlora.trials.steps import run_select_trial

    chosen = run_select_trial(results, [(a.uri, dict(a.metadata)) for a in adapters],
                              (trial_token_reports.uri, dict(trial_token_reports.metadata)), selection.path,
                              summary.path)
    adapter.uri = chosen["adapter"]["uri"]  # the winner's own adapter: what evaluate and register_model read
    adapter.metadata.update(chosen["adapter"]["metadata"])
    # the token report of the winner's budget: plan_trials' for another than the run's, else this run's own
    mine = chosen["token_report"] or {"uri": token_report.uri, "metadata": dict(token_report.metadata)}
    winner_token_report.uri = mine["uri"]
    winner_token_report.metadata.update(mine["metadata"])
    selection.metadata.update({"winner": chosen["winner"], "reason": chosen["reason"]})
    log_metrics(metrics, {"winner": chosen["winner"], "trials": len(chosen["trials"]), **{
        f"trial{t['index']}_{key}": t[key] for t in chosen["trials"] for key in
        ("validation_accuracy", "validation_macro_f1", "samples_per_s", "gpu_seconds") if t[key] is not None}})
    return namedtuple("Outputs", ["image_token_budget", "winner"])(chosen["image_token_budget"], chosen["winner"])
