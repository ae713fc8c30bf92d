"""The parameter schema is the one source: the pipeline's signature, its IR, the components and
configs/local.yaml agree with it, and bad values are refused together, naming field, value and rule."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from petqlora import params, schema

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_signature_is_the_schema():
    from pipeline import pet_breeds_pipeline

    sig = inspect.signature(pet_breeds_pipeline.pipeline_func)
    assert list(sig.parameters) == list(params.NAMES)
    hints = schema.types_of(params.PipelineParams)
    for name, parameter in sig.parameters.items():
        assert parameter.annotation is hints[name], name
        assert parameter.default == getattr(params.DEFAULTS, name), name


def test_every_parameter_carries_its_description_into_the_ir():
    from pipeline import pet_breeds_pipeline

    inputs = pet_breeds_pipeline.component_spec.inputs
    assert set(inputs) == set(params.NAMES)
    for name in params.NAMES:
        assert inputs[name].description == params.description(name), name
        assert params.description(name).strip(), name


def test_components_declare_the_schema_types():
    from components.evaluate import evaluate
    from components.prepare_data import prepare_data
    from components.register_model import register_model
    from components.train_adapter import train_adapter
    from components.validate_token_boundaries import validate_token_boundaries

    hints = schema.types_of(params.PipelineParams)
    for component in (prepare_data, validate_token_boundaries, train_adapter, evaluate, register_model):
        for name, parameter in inspect.signature(component.python_func).parameters.items():
            if name in hints:
                assert parameter.annotation in (hints[name], hints[name].__name__), (component.name, name)


def test_local_config_names_only_schema_parameters_with_valid_values():
    config = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    parsed = params.parse(config["parameters"])
    for name, value in config["parameters"].items():
        assert getattr(parsed, name) == value, name
    assert set(config["models"]) <= set(params.NAMES)


def test_defaults_are_the_real_cloud_recipe():
    d = params.DEFAULTS
    assert (d.lora_r, d.lora_alpha, d.lora_dropout, d.epochs, d.learning_rate) == (64, 64, 0.05, 3.0, 5e-5)
    assert d.image_token_budget == 280 and d.max_length == 1024 and d.base_model == "google/gemma-4-31b-it"


def test_bad_values_are_refused_together_naming_field_value_and_rule():
    with pytest.raises(ValueError) as info:
        params.parse({"lora_r": "0", "learning_rate": "abc", "image_token_budget": "123", "win_margin": "-1",
                      "epochs": "three", "backend": "{bad", "scoring": "bogus"}, text=True)
    message = str(info.value)
    for expected in ("lora_r=0: must be >= 1", "learning_rate='abc': must be a number",
                     "image_token_budget=123: must be one of 70, 140, 280, 560, 1120",
                     "win_margin=-1.0: must be in [0, 1]", "epochs='three': must be a number",
                     "backend='{bad': is not valid JSON", "scoring='bogus': must be one of score, generate"):
        assert expected in message, (expected, message)


@pytest.mark.parametrize("values, expected", [
    ({"lora_r": 64.5}, "lora_r=64.5: must be an integer"),
    ({"lora_r": True}, "lora_r=True: must be an integer"),
    ({"epochs": 0}, "epochs=0.0: must be > 0"),
    ({"test_fraction": 0.0}, "test_fraction=0.0: must be in (0, 1)"),
    ({"train_options": [1]}, "train_options=[1]: must be a JSON object"),
    ({"bogus": 1}, "bogus=1: is not a known field"),
])
def test_each_rule_refuses(values, expected):
    with pytest.raises(ValueError, match="invalid pipeline parameters") as info:
        params.parse(values)
    assert expected in str(info.value)


def test_command_line_text_parses_to_the_declared_types():
    parsed = params.parse({"lora_r": "32", "epochs": "2", "backend": '{"kind": "local"}', "source": "gs://b/pets"},
                          text=True)
    assert (parsed.lora_r, parsed.epochs, parsed.backend, parsed.source) == (32, 2.0, {"kind": "local"}, "gs://b/pets")
    assert isinstance(parsed.epochs, float)


def test_kfp_struct_floats_come_back_as_declared_ints():
    parsed = params.parse({"lora_r": 32.0, "epochs": 2})
    assert parsed.lora_r == 32 and isinstance(parsed.lora_r, int) and isinstance(parsed.epochs, float)


def test_mutable_defaults_are_not_shared():
    a, b = params.PipelineParams(), params.PipelineParams()
    a.train_options["x"] = 1
    assert "x" not in b.train_options and "x" not in params.DEFAULTS.train_options


def test_round_trip_through_json():
    p = params.parse({"lora_r": 8, "train_options": {"log_every": 3}})
    assert params.parse(schema.to_json_dict(p)) == p
    assert dataclasses.asdict(params.parse({})) == dataclasses.asdict(params.DEFAULTS)


def test_params_command_prints_every_parameter_from_the_schema(capsys):
    import pipeline

    assert pipeline.main(["params"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == list(params.NAMES)
    budget = next(row for row in rows if row.startswith("| `image_token_budget`"))
    assert "| int | `280` | 70, 140, 280, 560, 1120 |" in budget
