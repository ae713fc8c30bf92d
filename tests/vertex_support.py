"""What the Vertex tests share: the fake as a fixture, an environment without credentials, two tiny compiled
pipelines, and the REST requests the fake received in the shape a dry run prints them."""

# No `from __future__ import annotations`: kfp reads the components' annotations as real types.
from urllib.parse import unquote

import pytest
from google.auth.credentials import AnonymousCredentials
from kfp import compiler, dsl

from fakes.vertex_api import FakeVertexAPI

PROJECT, REGION, ROOT = "my-proj", "us-central1", "gs://my-bucket/pipeline-root"
SA = "trainer@my-proj.iam.gserviceaccount.com"
LOCATION = f"projects/{PROJECT}/locations/{REGION}"
STORE = f"{LOCATION}/metadataStores/default"
ALT = {"$alt": "json;enum-encoding=int"}  # what the aiplatform REST transports add to every call


@dsl.component(base_image="python:3.11-slim")
def _echo(n: int, s: str) -> str:
    return f"{s}{n}"


@dsl.pipeline(name="tiny-pipeline")
def tiny_pipeline(n: int = 1, s: str = "x"):
    _echo(n=n, s=s)


@dsl.pipeline(name="tiny-experiment-pipeline")
def tiny_experiment_pipeline(n: int = 1, experiment: str = ""):
    """A pipeline that, like the real one, takes an `experiment` parameter."""
    _echo(n=n, s=experiment)


def compile_to(path, pipeline_func) -> str:
    compiler.Compiler().compile(pipeline_func, str(path))
    return str(path)


@pytest.fixture
def fake():
    with FakeVertexAPI() as api:
        yield api


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """An environment where google.auth.default really finds nothing, without probing the network."""
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT", "CLOUD_ML_PROJECT_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no application_default_credentials.json
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # skip the metadata-server probe


def cloud(fake) -> dict:
    return {"credentials": AnonymousCredentials(), "api_endpoint": fake.endpoint}


def sent(fake, start: int = 0) -> list[dict]:
    """The requests the fake received since `start`, as a dry run prints a REST call: "http" and "query"
    (query values are text on the wire: a dry run's numbers are compared as text), and "body" for a POST."""
    calls = []
    for r in fake.requests[start:]:
        call = {"http": f"{r['verb']} {r['path']}", "query": r["query"]}
        if r["verb"] in ("POST", "PATCH"):
            call["body"] = r["body"]
        calls.append(call)
    return calls


def as_sent(dry_run_request: dict) -> dict:
    """A dry run's REST call in the shape of `sent`: its method name and notes dropped, query values as text,
    the path unescaped as the fake reads it ("%40" is "@")."""
    call = {"http": unquote(dry_run_request["http"]), "query": {k: str(v) for k, v in dry_run_request["query"].items()}}
    if "body" in dry_run_request:
        call["body"] = dry_run_request["body"]
    return call
