"""The pet-breed QLoRA pipeline: the @dsl.pipeline wiring (`python pipeline.py` is its command line)."""


from dataclasses import dataclass

from kfp import dsl

from petqlora import params

from components.add_to_experiment import add_to_experiment
from components.check_parameters import check_parameters
from components.check_serving import check_serving
from components.decide_training import decide_training
from components.deploy_model import deploy_model
from components.evaluate import evaluate
from components.fingerprint_source import fingerprint_source
from components.plan_trials import plan_trials
from components.prepare_data import prepare_data
from components.register_model import register_model
from components.score_trial import score_trial
from components.select_trial import select_trial
from components.train_adapter import train_adapter
from components.validate_token_boundaries import validate_token_boundaries

PIPELINE_NAME = params.PIPELINE_NAME
# Trials trained at once. KFP 2.17 takes ParallelFor's limit as an int fixed in the compiled pipeline, not as a
# run parameter: `compile --trial-parallelism N` (or run-local's) sets another. Keep it within the region's
# Cloud Run GPU quota (one GPU per trial), or a trial's job is refused for quota.
TRIAL_PARALLELISM = 2


@dataclass(frozen=True)
class StepSettings:
    """A step's retry policy (retries, first backoff; the backoff doubles each time) and its CPU and memory,
    set as both request and limit: Vertex sizes the step's machine from the limits, Kubernetes schedules on
    the requests, and equal ones keep a step from being evicted mid-run."""

    retries: int
    backoff: str
    cpu: str
    memory: str


# Every step is safe to retry: check_parameters, fingerprint_source and decide_training only read; prepare_data
# rewrites its output folder; add_to_experiment adds a run that is already there; the GPU launchers re-attach
# to their Cloud Run execution by task id (a succeeded one is reused, never paid twice); register_model is
# idempotent per run id. A refusal of bad input fails the same way again, so the deterministic CPU steps get
# one retry; train_adapter gets one because a failed GPU execution has had Cloud Run's own task retries
# already, and each pipeline retry may start a new one.
STEP_SETTINGS = {
    # every parameter against its rule, the training config, the backend's job specs: no data read
    "check_parameters": StepSettings(retries=1, backoff="30s", cpu="1", memory="2G"),
    # listing or stat of the source, no file read; the storage client and a listing of ~10^5 objects
    "fingerprint_source": StepSettings(retries=3, backoff="30s", cpu="1", memory="2G"),
    # one image decoded at a time (a 40 MP image is 120 MB as RGB) + perceptual hash; single-threaded
    "prepare_data": StepSettings(retries=1, backoff="60s", cpu="2", memory="8G"),
    # the processor (Gemma's 262k-token tokenizer) and each example's resize + encode; torch uses the cores
    "validate_token_boundaries": StepSettings(retries=1, backoff="30s", cpu="4", memory="8G"),
    # the trial list; the token-boundary check of each other image_token_budget (as validate_token_boundaries)
    "plan_trials": StepSettings(retries=1, backoff="30s", cpu="4", memory="8G"),
    # a registry lookup and the training config's parse
    "decide_training": StepSettings(retries=3, backoff="30s", cpu="1", memory="2G"),
    # launches and polls the Cloud Run Job: the GPU work runs there (20 vCPU, 80 GiB, one RTX PRO 6000)
    "train_adapter": StepSettings(retries=1, backoff="60s", cpu="1", memory="2G"),
    # launches a trial's validation scoring job and reads its result
    "score_trial": StepSettings(retries=2, backoff="60s", cpu="1", memory="2G"),
    # a few JSON files: the trials' figures
    "select_trial": StepSettings(retries=1, backoff="30s", cpu="1", memory="2G"),
    # launches the evaluation jobs, then builds the HTML report (matplotlib figures)
    "evaluate": StepSettings(retries=2, backoff="60s", cpu="2", memory="4G"),
    # one Model Registry upload (or a SQLite row)
    "register_model": StepSettings(retries=3, backoff="30s", cpu="1", memory="2G"),
    # creates an endpoint and waits on the deployment (the GPU machine is Vertex's, not this step's)
    "deploy_model": StepSettings(retries=1, backoff="60s", cpu="1", memory="2G"),
    # two ML Metadata calls
    "add_to_experiment": StepSettings(retries=3, backoff="30s", cpu="1", memory="2G"),
    # a local registry: the server as a subprocess on the tiny model + the test split over HTTP; Vertex: a skip
    "check_serving": StepSettings(retries=1, backoff="30s", cpu="2", memory="4G"),
}


def _sized(task, step: str):
    """`task` with its step's retry policy and resources from STEP_SETTINGS."""
    s = STEP_SETTINGS[step]
    return (task.set_retry(num_retries=s.retries, backoff_duration=s.backoff, backoff_factor=2.0)
            .set_cpu_request(s.cpu).set_cpu_limit(s.cpu).set_memory_request(s.memory).set_memory_limit(s.memory))


def _train_trials(p, data, check, plan, run_id):
    """Each trial trained (and, in a sweep of several, scored on the validation split) in its own branch, at
    most TRIAL_PARALLELISM at once; the winner selected. Returns the select_trial task."""
    with dsl.ParallelFor(plan.outputs["Output"], parallelism=TRIAL_PARALLELISM, name="trials") as trial:
        train = _sized(train_adapter(
            dataset=data.outputs["dataset"], base_model=p.base_model, lora_r=trial.lora_r,
            lora_alpha=trial.lora_alpha, lora_dropout=trial.lora_dropout, epochs=trial.epochs,
            learning_rate=trial.learning_rate, batch_size=trial.batch_size, grad_accum=trial.grad_accum,
            image_token_budget=trial.image_token_budget, max_length=trial.max_length, seed=p.seed,
            train_options=trial.train_options, backend=p.backend, project=p.project, region=p.region, run_id=run_id,
            trial=trial.index,
        ), "train_adapter").set_display_name("Train adapter (QLoRA, Cloud Run GPU)").after(check)
        train.set_caching_options(False)  # launches a paid GPU job; its own checkpoints make retries cheap
        score = _sized(score_trial(
            dataset=data.outputs["dataset"], adapter=train.outputs["adapter"], trial=trial, base_model=p.base_model,
            scoring=p.scoring, backend=p.backend, project=p.project, region=p.region, run_id=run_id,
        ), "score_trial").set_display_name("Score trial (validation split)")
        score.set_caching_options(False)  # launches a paid GPU job
    return _sized(select_trial(
        results=dsl.Collected(score.outputs["Output"]), adapters=dsl.Collected(train.outputs["adapter"]),
        token_report=check.outputs["records"], trial_token_reports=plan.outputs["token_reports"],
    ), "select_trial").set_display_name("Select trial (best validation accuracy)")


def _train_evaluate_register(p, data, check, plan, run_id) -> None:
    """The GPU steps (the trials, then the winner on the test split), and registration when it wins."""
    best = _train_trials(p, data, check, plan, run_id)
    scores = _sized(evaluate(
        dataset=data.outputs["dataset"], adapter=best.outputs["adapter"], base_model=p.base_model,
        gemma4_baseline=p.gemma4_baseline, gemma3_baseline=p.gemma3_baseline,
        contrastive_baseline=p.contrastive_baseline, gate_on_contrastive=p.gate_on_contrastive,
        image_token_budget=best.outputs["image_token_budget"], scoring=p.scoring, win_margin=p.win_margin,
        registry=p.registry, model_name=p.model_name, backend=p.backend, project=p.project, region=p.region,
        run_id=run_id, selection=best.outputs["selection"],
    ), "evaluate").set_display_name("Evaluate vs Gemma 3 / Gemma 4 / contrastive baselines")
    scores.set_caching_options(False)  # reads the registry's current champion
    with dsl.If(scores.outputs["Output"] == "register", name="fine-tuned model wins"):
        registered = _sized(register_model(
            dataset=data.outputs["dataset"], token_report=best.outputs["winner_token_report"],
            adapter=best.outputs["adapter"], evaluation=scores.outputs["evaluation"], model_name=p.model_name,
            registry=p.registry, project=p.project, region=p.region, serving_image=p.serving_image,
            code_revision=p.code_revision, run_id=run_id,
        ), "register_model").set_display_name("Register model").set_caching_options(False)
        # KFP conditions compare primitives only, so deploy={} (off) is the step's own first check; a local
        # registry never deploys (run_checks refuses deploy with it)
        with dsl.If(p.registry == "vertex", name="registered to Vertex"):
            _sized(deploy_model(model_version=registered.outputs["Output"], model_name=p.model_name, deploy=p.deploy,
                                project=p.project, region=p.region, run_id=run_id), "deploy_model"
                   ).set_display_name("Deploy to endpoint (when deploy is set)").set_caching_options(False)
        _sized(check_serving(
            dataset=data.outputs["dataset"], evaluation=scores.outputs["evaluation"],
            model_version=registered.outputs["Output"], registry=p.registry,
        ), "check_serving").set_display_name("Check serving (HTTP = evaluate)").set_caching_options(False)


@dsl.pipeline(name=PIPELINE_NAME, description="Fine-tune Gemma 4 with QLoRA to classify pet breeds; evaluate "
              "against Gemma 3 and Gemma 4 baselines; register the adapter only when it wins.")
@params.with_signature
def pet_breeds_pipeline(p):
    """The pet-breed QLoRA pipeline: prepare, validate, train, evaluate, register when it wins."""
    run_id = dsl.PIPELINE_JOB_NAME_PLACEHOLDER
    checked = _sized(check_parameters(**{name: getattr(p, name) for name in params.NAMES}), "check_parameters")
    checked.set_display_name("Check parameters").set_caching_options(False)  # sees the registry as it is now
    source = _sized(fingerprint_source(source=p.source, run_id=run_id), "fingerprint_source").after(checked)
    source.set_display_name("Fingerprint source").set_caching_options(False)  # must see the source as it is now
    data = _sized(prepare_data(
        source=p.source, seed=p.seed, val_fraction=p.val_fraction, test_fraction=p.test_fraction,
        max_per_class_train=p.max_per_class_train, max_per_class_eval=p.max_per_class_eval, on_bad_input=p.on_bad_input,
        source_fingerprint=source.outputs["Output"],
    ), "prepare_data").set_display_name("Prepare data").after(checked)
    check = _sized(validate_token_boundaries(
        dataset=data.outputs["dataset"], base_model=p.base_model, image_token_budget=p.image_token_budget,
        max_length=p.max_length, sample=p.validation_sample,
    ), "validate_token_boundaries").set_display_name("Validate token boundaries")
    plan = _sized(plan_trials(
        dataset=data.outputs["dataset"], base_model=p.base_model, seed=p.seed, lora_r=p.lora_r,
        lora_alpha=p.lora_alpha, lora_dropout=p.lora_dropout, epochs=p.epochs, learning_rate=p.learning_rate,
        batch_size=p.batch_size, grad_accum=p.grad_accum, image_token_budget=p.image_token_budget,
        max_length=p.max_length, train_options=p.train_options, trials=p.trials, sample=p.validation_sample,
    ), "plan_trials").set_display_name("Plan trials").after(check)
    decision = _sized(decide_training(
        dataset=data.outputs["dataset"], base_model=p.base_model, lora_r=p.lora_r, lora_alpha=p.lora_alpha,
        lora_dropout=p.lora_dropout, epochs=p.epochs, learning_rate=p.learning_rate, batch_size=p.batch_size,
        grad_accum=p.grad_accum, image_token_budget=p.image_token_budget, max_length=p.max_length, seed=p.seed,
        train_options=p.train_options, trials=p.trials, force_training=p.force_training, registry=p.registry,
        model_name=p.model_name, project=p.project, region=p.region, run_id=run_id,
    ), "decide_training").set_display_name("Train or skip (vs the registered version)").after(plan)
    decision.set_caching_options(False)  # reads the registry, which changes between runs
    with dsl.If(decision.outputs["Output"] == "train", name="new data, new config or forced"):
        _train_evaluate_register(p, data, check, plan, run_id)
    # A scheduled run is created by Vertex, so no client can put it in an experiment: it adds itself.
    with dsl.If(p.experiment != "", name="experiment named"):
        _sized(add_to_experiment(
            experiment=p.experiment, project=p.project, region=p.region,
            pipeline_job=dsl.PIPELINE_JOB_RESOURCE_NAME_PLACEHOLDER,
        ), "add_to_experiment").after(checked).set_display_name("Add run to experiment").set_caching_options(False)


def with_trial_parallelism(limit: int):
    """The pipeline with at most `limit` trials trained at once (0: no limit): a copy whose ParallelFor limit
    is set, since KFP takes the limit when the DAG is built, not as a run parameter."""
    import copy

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValueError(f"--trial-parallelism {limit!r}: must be an integer >= 0 (0: every trial at once); "
                         f"fix: e.g. {TRIAL_PARALLELISM}, at most the region's Cloud Run GPU quota")
    pipeline = copy.deepcopy(pet_breeds_pipeline)
    spec = pipeline.pipeline_spec
    for dag in (spec.root.dag, *(c.dag for c in spec.components.values() if c.HasField("dag"))):
        for task in dag.tasks.values():
            if task.HasField("iterator_policy"):
                task.iterator_policy.parallelism_limit = limit
    return pipeline
