"""Shared test set-up."""

import os

import pytest
import torch
from hypothesis import settings

# Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (`.ci/run` sets `ci`; unset means `dev`).
# ci: the same examples on every run (derandomize: a red CI run is the code, never a new draw), and no
# deadline: CI is a loaded 2-core machine, where the per-example time depends on what else runs (the
# masking property test took 1-316 ms an example when measured on this project), so a fixed deadline fails
# on the machine, not the code; these tests check correctness, not speed. print_blob: a failure prints
# the @reproduce_failure blob that replays it.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
# dev: Hypothesis' defaults (random draws, the example database, the 200 ms deadline). A test whose
# examples are slow by nature keeps its own deadline=None (test_masking's FAST).
settings.register_profile("dev")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    # On a shared 2-core machine, two OpenMP threads that lose a core to another process spin and make
    # tiny ops ~50x slower; one thread keeps the in-process tests fast and their timings stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(variant)`: a tiny random checkpoint folder (gemma4-31b, gemma4-e, gemma3), built once
    per variant for the whole session. Tests read it; none writes into it."""
    from petqlora.gemma.tiny_models import build_tiny_checkpoint

    built = {}

    def build(variant: str):
        if variant not in built:
            built[variant] = build_tiny_checkpoint(variant, tmp_path_factory.mktemp("tiny") / variant)
        return built[variant]

    return build


@pytest.fixture(scope="session")
def pets_dataset(tmp_path_factory):
    """`pets_dataset(per_class)`: a prepared synthetic pets dataset (6 learnable breeds, varied aspect
    ratios), built once per size for the whole session. Tests read it; none writes into it."""
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
    from petqlora.data.synthetic import generate_synthetic_pets

    built = {}

    def build(per_class: int = 4):
        if per_class not in built:
            root = tmp_path_factory.mktemp(f"pets{per_class}")
            source = generate_synthetic_pets(root / "source", per_class=per_class, seed=0)
            built[per_class] = prepare_data(PrepareDataConfig(source=str(source)), root / "dataset").path
        return built[per_class]

    return build


@pytest.fixture
def cloud_run_api(monkeypatch):
    """The real run_v2 REST clients, pointed at the local fake of the Cloud Run Admin API (tests/fakes): code that
    builds its own `run_v2.JobsClient()` / `ExecutionsClient()` talks to the fake."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import run_v2

    from fakes.cloud_run_api import FakeCloudRunApi

    made = []
    with FakeCloudRunApi() as fake:
        def towards_the_fake(real):
            def construct(*args, **kwargs):
                client = real(*args, **{**kwargs, "credentials": AnonymousCredentials(), "transport": "rest",
                                        "client_options": {"api_endpoint": fake.endpoint}})
                made.append(client)
                return client
            return construct

        monkeypatch.setattr(run_v2, "JobsClient", towards_the_fake(run_v2.JobsClient))
        monkeypatch.setattr(run_v2, "ExecutionsClient", towards_the_fake(run_v2.ExecutionsClient))
        yield fake
        for client in made:  # close keep-alive sessions before the server goes
            client.transport.close()
