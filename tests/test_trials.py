"""Trials: the plan (overrides checked against the schema, applied, fingerprinted), the winner's selection (ties
to the cheaper trial), the trials table, and the select step's outputs."""

import json

import pytest

from petqlora import params, schema
from petqlora.problems import Problems
from petqlora.registry.champion import config_fingerprint
from petqlora.run_checks import check_run
from petqlora.train.config import train_config_values
from petqlora.trials import plan, report, select
from petqlora.trials.steps import run_plan_trials, run_select_trial, token_report_name

RUN = schema.to_json_dict(params.DEFAULTS)
LOCAL = {"registry": "/tmp/registry.sqlite", "backend": {"kind": "local"}}  # a folder that exists


def _config(values: dict) -> dict:
    """The training config train_adapter builds from a trial's fields."""
    return train_config_values(values["train_options"], base_model=RUN["base_model"], seed=RUN["seed"],
                               **{k: values[k] for k in plan.TUNABLE if k != "train_options"})


def _refusal(trials) -> str:
    with pytest.raises(ValueError) as exc:
        check_run({"trials": trials, **LOCAL})
    return str(exc.value)


# ---- plan

def test_no_trials_plan_one_item_of_the_run_s_own_fields():
    [item] = plan.plan_trials([], RUN)
    assert item["index"] == 0 and item["count"] == 1 and item["overrides"] == {}
    assert {k: item[k] for k in plan.TUNABLE} == plan.base_values(RUN)
    assert item["config_fingerprint"] == config_fingerprint(_config(RUN))


def test_each_trial_is_the_run_s_fields_with_its_overrides():
    trials = [{"image_token_budget": 140.0}, {"lora_r": 32, "train_options": {"adapt_vision": False}}]
    items = plan.plan_trials(trials, RUN)
    assert [(t["index"], t["count"]) for t in items] == [(0, 2), (1, 2)]
    assert items[0]["image_token_budget"] == 140 and isinstance(items[0]["image_token_budget"], int)  # KFP's 140.0
    assert items[0]["lora_r"] == RUN["lora_r"]
    assert items[1]["lora_r"] == 32 and items[1]["image_token_budget"] == RUN["image_token_budget"]
    # a trial's train_options are merged into the run's, not replacing them
    assert items[1]["train_options"] == {**RUN["train_options"], "adapt_vision": False}
    assert items[0]["train_options"] == RUN["train_options"]
    for item, overrides in zip(items, trials):
        # what decide_training fingerprints (the run's config + the overrides) is what the trial trains
        assert plan.trial_config(_config(RUN), overrides) == _config(item)
        assert item["config_fingerprint"] == config_fingerprint(_config(item))
    assert len({t["config_fingerprint"] for t in items}) == 2


def test_the_token_checks_are_the_trials_other_budget_and_length_pairs_each_once():
    items = plan.plan_trials([{}, {"image_token_budget": 140}, {"image_token_budget": 140, "lora_r": 8},
                              {"max_length": 2048}, {"lora_r": 8}], RUN)
    assert plan.token_checks(items, plan.base_values(RUN)) == [(140, 1024), (280, 2048)]
    assert plan.token_checks(plan.plan_trials([], RUN), plan.base_values(RUN)) == []


def test_the_sweep_fingerprint_is_the_trial_s_own_for_one_and_order_free_for_several():
    a, b = "a" * 64, "b" * 64
    assert plan.sweep_fingerprint([a]) == a  # a run without trials is fingerprinted as before
    assert plan.sweep_fingerprint([a, b]) == plan.sweep_fingerprint([b, a])
    assert plan.sweep_fingerprint([a, b]) not in (a, b, plan.sweep_fingerprint([a, a + "c"]))


def test_good_trials_pass_the_run_checks():
    trials = [{"image_token_budget": 140}, {"image_token_budget": 280, "lora_r": 32}]
    assert check_run({"trials": trials, **LOCAL}).trials == trials
    assert check_run({"trials": json.dumps(trials), **LOCAL}, text=True).trials == trials  # --param trials='[...]'


@pytest.mark.parametrize("trials, expected", [
    ([{"lora_rank": 32}], "trials[0].lora_rank=32: is not a training field a trial can set; fix: use one of "
                          "image_token_budget, lora_r"),
    ([{}, {"seed": 7}], "trials[1].seed=7: is the run's, the same for every trial; fix: use one of"),
    ([{"image_token_budget": 100}], "trials[0].image_token_budget=100: must be one of 70, 140, 280, 560, 1120; "
                                    "fix: e.g. 280 (the default)"),
    ([{"lora_r": 0}], "trials[0].lora_r=0: must be >= 1; fix: e.g. 64 (the default)"),
    ([{"learning_rate": "fast"}], "trials[0].learning_rate='fast': must be a finite number"),
    ([32], "trials[0]=32: must be a JSON object of training fields to override"),
    ({"lora_r": 32}, "trials={'lora_r': 32}: must be a JSON list"),
    ([{"train_options": {"lora_r": 8}}], "trials[0].train_options.lora_r=8: repeats the field lora_r, which a "
                                         "trial sets itself; fix: set {\"lora_r\": 8} in the trial"),
    ([{"train_options": {"warmup_ratio": 2}}], "trials[0].train_options.warmup_ratio=2.0: must be in [0, 1)"),
    ([{"train_options": {"cache_image_features": True}}],
     "trials[0].train_options.cache_image_features=True: needs adapt_vision=false"),
    ([{"lora_r": 8}, {"lora_r": 8.0}], "trials[1]={'lora_r': 8.0}: trains the same config as trials[0]; fix: drop"),
    ([{}, {"lora_r": 64}], "trials[1]={'lora_r': 64}: trains the same config as trials[0]"),  # the run's own
])
def test_bad_trials_are_refused_naming_the_trial_the_key_the_rule_and_the_fix(trials, expected):
    message = _refusal(trials)
    assert message.startswith("invalid run parameters:")
    assert expected in message, message
    assert all("; fix: " in line for line in message.splitlines()[1:]), message  # each problem names its fix


def test_every_bad_trial_is_named_in_one_message():
    message = _refusal([{"lora_r": 0}, {}, {"epochs": -1, "dropout": 0.1}])
    assert "trials[0].lora_r=0" in message and "trials[2].epochs=-1" in message and "trials[2].dropout" in message
    assert "trials[1]" not in message


def test_a_trial_is_not_blamed_for_the_run_s_own_bad_field():
    with pytest.raises(ValueError) as exc:
        check_run({"trials": [{"lora_r": 8}], "train_options": {"warmup_ratio": 5}, **LOCAL})
    assert "train_options.warmup_ratio=5" in str(exc.value) and "trials[0]" not in str(exc.value)


def test_the_plan_refuses_what_the_checks_refuse():
    with pytest.raises(ValueError, match=r"trials\[0\].lora_r=0"):
        plan.plan_trials([{"lora_r": 0}], RUN)


def test_check_trials_returns_each_trial_s_fingerprint():
    p = Problems("trials")
    fingerprints = plan.check_trials([{}, {"lora_r": 0}], plan.base_values(RUN), RUN, p)
    assert fingerprints[0] == config_fingerprint(_config(RUN)) and fingerprints[1] is None and len(p.items) == 1


def test_the_trials_parameter_is_a_list_in_the_schema():
    assert params.DEFAULTS.trials == [] and params.NAMES.index("trials") == params.NAMES.index("train_options") + 1
    with pytest.raises(ValueError, match="trials='x': must be a JSON list"):
        params.parse({"trials": "x"})


# ---- select

def _result(index, accuracy, *, count=3, budget=280, gpu=100.0, rank=64, **extra):
    return select.TrialResult(index=index, count=count, overrides={"i": index}, image_token_budget=budget, lora_r=rank,
                              max_length=1024, config_fingerprint=f"{index}" * 64, adapter_uri=f"/run/t{index}",
                              gpu_seconds=gpu, train_seconds=gpu / 2, samples_per_s=3.0,
                              validation_accuracy=accuracy, validation_macro_f1=accuracy, validation_examples=30,
                              **extra)


def test_the_best_validation_accuracy_wins():
    winner, reason = select.select_winner([_result(0, 0.5), _result(1, 0.8), _result(2, 0.7)])
    assert winner.index == 1 and "best validation accuracy, 0.800" in reason and "ties" not in reason


@pytest.mark.parametrize("a, b, expected", [
    (dict(budget=280, gpu=10.0), dict(budget=140, gpu=99.0), 1),  # the smaller budget first
    (dict(gpu=50.0), dict(gpu=40.0), 1),  # same budget: less GPU time
    (dict(rank=64), dict(rank=16), 1),  # same budget and time: the smaller rank
    ({}, {}, 0),  # nothing cheaper: the earlier trial
])
def test_a_tie_goes_to_the_cheaper_trial(a, b, expected):
    # 0.1 + 0.2 and 0.3 differ by float noise only: the same k/n accuracy
    winner, reason = select.select_winner([_result(0, 0.1 + 0.2, count=2, **a), _result(1, 0.3, count=2, **b)])
    assert winner.index == expected and "ties trial" in reason and "cheaper" in reason


def test_one_trial_wins_without_a_validation_score():
    winner, reason = select.select_winner([_result(0, None, count=1)])
    assert winner.index == 0 and "no validation evaluation" in reason


@pytest.mark.parametrize("results, message", [
    ([], "no trial results"),
    ([_result(0, 0.5), _result(2, 0.5)], r"do not cover the sweep's 3 trials"),
    ([_result(0, 0.5, count=2), _result(0, 0.5, count=2)], r"do not cover"),
    ([_result(0, 0.5, count=2), _result(1, None, count=2)], r"trials \[1\] have no validation score"),
])
def test_an_incomplete_sweep_is_refused(results, message):
    with pytest.raises(ValueError, match=message):
        select.select_winner(results)


def test_a_trial_result_out_of_range_is_refused():
    with pytest.raises(ValueError, match="not valid"):
        _result(0, 1.5)
    assert _result(0.0, 0.5, count=3.0).index == 0  # KFP's floats


# ---- the select step and the report

def _selection(tmp_path, results, reports=None):
    adapters = [(r["adapter_uri"] + "/", {"sha256": f"sha-{r['index']}", "config_fingerprint": r["config_fingerprint"]})
                for r in results]
    return run_select_trial(results, adapters, ("/run/plan/token_reports", {"reports": reports or {}}),
                            str(tmp_path / "selection.json"), str(tmp_path / "summary.md"))


def test_the_select_step_hands_on_the_winner_s_adapter_and_token_report(tmp_path):
    results = [dict(vars(_result(0, 0.5, count=2)), image_token_budget=280),
               dict(vars(_result(1, 0.9, count=2)), image_token_budget=140)]
    name = token_report_name(140, 1024)
    chosen = _selection(tmp_path, results, {name: "abc"})
    assert chosen["winner"] == 1 and chosen["image_token_budget"] == 140
    assert chosen["adapter"]["uri"] == "/run/t1"
    meta = chosen["adapter"]["metadata"]
    assert meta["sha256"] == "sha-1" and meta["trial"] == 1 and meta["trial_config_fingerprint"] == "1" * 64
    assert meta["config_fingerprint"] == plan.sweep_fingerprint(["0" * 64, "1" * 64])  # what decide_training compares
    assert chosen["token_report"] == {"uri": f"/run/plan/token_reports/{name}",
                                      "metadata": {"sha256": "abc", "image_token_budget": 140}}
    assert json.loads((tmp_path / "selection.json").read_text()) == chosen
    summary = (tmp_path / "summary.md").read_text()
    assert "**Trial 1**" in summary and "| 0 |" in summary and "| 1 |" in summary and "winner" in summary
    # the run's own budget: validate_token_boundaries' report (None here), not plan_trials'
    results[1]["validation_accuracy"] = 0.1
    assert _selection(tmp_path, results, {name: "abc"})["token_report"] is None


def test_the_select_step_refuses_an_adapter_it_was_not_given(tmp_path):
    results = [dict(vars(_result(0, None, count=1)))]
    with pytest.raises(ValueError, match="not among the trials' adapters"):
        run_select_trial(results, [("/elsewhere", {})], ("/r", {}), str(tmp_path / "s.json"), str(tmp_path / "s.md"))


def test_the_trials_table_has_every_trial_and_marks_the_winner():
    trials = [vars(_result(0, 0.5, count=2)), dict(vars(_result(1, 0.75, count=2)), overrides={"lora_r": 8})]
    md = report.trials_markdown(trials, winner=1)
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 2 and rows[1].endswith("| winner |") and not rows[0].endswith("winner |")
    assert '{"lora_r": 8}' in rows[1] and "75.0%" in rows[1] and "3.00" in rows[1] and "1m 40s" in rows[1]
    html = report.trials_html([dict(trials[0], overrides={"x": "<b>"}), trials[1]], winner=1)
    assert "&lt;b&gt;" in html and "<b>" not in html and html.count("<tr>") == 3


def test_the_evaluation_reports_show_the_trials_of_a_sweep():
    from petqlora.evaluation.metrics import classification_result
    from petqlora.evaluation.report_html import html_report
    from petqlora.evaluation.report_table import ModelRow, markdown_summary

    rows = [ModelRow("Gemma 4 + QLoRA (fine-tuned)", 0.9, 0.9, 1.0, 2.0)]
    trials = {"winner": 1, "trials": [vars(_result(0, 0.5, count=2)), vars(_result(1, 0.75, count=2))]}
    md = markdown_summary(rows, registered=False, model_version=None, reason="not registered: x", trials=trials)
    assert "### Trials (validation split)" in md and md.count("| winner |") == 1
    assert "Trials" not in markdown_summary(rows, registered=False, model_version=None, reason="not registered: x")
    result = classification_result(["a", "b"], ["a", "b"], ["a", "b"])
    page = html_report(rows=rows, classes=["a", "b"], finetuned=result, loss_curve=None, title="t",
                       registered=False, reason="not registered: x", trials=trials)
    assert "<h2>Trials (validation split)</h2>" in page


def test_plan_step_writes_the_plan_and_checks_no_other_budget_when_none_is_asked(tmp_path):
    items, reports = run_plan_trials([{"lora_r": 8}, {"lora_r": 16}], RUN, dataset_dir=str(tmp_path / "none"),
                                     sample=0, token_dir=str(tmp_path / "tokens"), summary_md=str(tmp_path / "s.md"))
    assert [t["lora_r"] for t in items] == [8, 16] and reports == {}  # no dataset read: nothing to check
    assert "2 trials, trained in parallel" in (tmp_path / "s.md").read_text()


def test_the_decision_fingerprints_the_sweep(tmp_path):
    from petqlora.steps import run_decide_training

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "petqlora.dataset/v1", "dataset_hash": "d" * 64}))
    trials = [{"lora_r": 8}, {"image_token_budget": 140}]

    def decide(trials):
        return run_decide_training(str(tmp_path), _config(RUN), trials=trials, force_training=False,
                                   registry=str(tmp_path / "none.sqlite"), model_name="m", project="", region="",
                                   decision_json=str(tmp_path / "d.json"), summary_md=str(tmp_path / "d.md"))

    fingerprints = [t["config_fingerprint"] for t in plan.plan_trials(trials, RUN)]
    assert decide(trials)["config_fingerprint"] == plan.sweep_fingerprint(fingerprints)
    assert decide([])["config_fingerprint"] == config_fingerprint(_config(RUN))  # no trials: as before


def test_a_single_trial_is_not_scored_and_its_figures_come_from_its_training(tmp_path):
    """A sweep of one pays for no validation evaluation: no job is run (the backend is never called)."""
    from petqlora.trials.steps import run_score_trial

    class NoJobs:  # any call would be a validation evaluation this case must not pay for
        def __getattr__(self, name):
            raise AssertionError(f"backend.{name} called")

    (tmp_path / "metrics.json").write_text(json.dumps({"train_time_s": 40.0, "wall_time_s": 55.0, "final_loss": 0.5}))
    (tmp_path / "progress.json").write_text(json.dumps({"samples_per_s": 2.5}))
    [item] = plan.plan_trials([], RUN)
    kfp_item = json.loads(json.dumps(dict(item, index=0.0, count=1.0, overrides={})))
    figures = run_score_trial("/data", str(tmp_path), str(tmp_path) + "/", kfp_item, base_model="m", mode="score",
                              backend=NoJobs(), task_id="t", out_dir=str(tmp_path / "v"))
    # no None inside: kfp refuses a null in a parameter value (the collected results select_trial takes)
    assert None not in figures.values() and "validation_accuracy" not in figures
    assert select.TrialResult.from_dict(figures).validation_accuracy is None and figures["gpu_seconds"] == 55.0
    assert figures["samples_per_s"] == 2.5 and figures["train_seconds"] == 40.0 and figures["index"] == 0
    assert figures["adapter_uri"] == str(tmp_path) and not (tmp_path / "v").exists()


def test_overrides_are_reported_as_their_parameter_types():
    assert plan.normalized({"lora_r": 8.0, "image_token_budget": 140.0, "epochs": 2}) == {
        "lora_r": 8, "image_token_budget": 140, "epochs": 2.0}
