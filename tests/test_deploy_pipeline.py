"""The pipeline's optional deployment: the `deploy` parameter (off by default, its machine checked by the
schema), refused with a local registry before anything is spent, the deploy_model step wired after
register_model (Vertex only), and its library call through the real SDK against the Vertex fake."""

import functools
import sys
from pathlib import Path

import pytest
import yaml
from kfp.dsl import Artifact

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline  # noqa: E402
from components.deploy_model import deploy_model  # noqa: E402
from petqlora import params  # noqa: E402
from petqlora.cloud import vertex_endpoints, vertex_models  # noqa: E402
from petqlora.cloud.vertex_endpoints import deploy_registered  # noqa: E402
from petqlora.run_checks import check_run  # noqa: E402

from vertex_support import LOCATION, PROJECT, REGION, cloud, fake  # noqa: E402,F401

SERVING = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"
BACKEND = {"kind": "cloud_run", "image": SERVING, "service_account": "petqlora-job@my-proj.iam.gserviceaccount.com",
           "bucket": "my-bucket", "hf_token_secret": "hf-token"}
CLOUD = {"project": PROJECT, "region": REGION, "backend": BACKEND, "serving_image": SERVING}


def test_deploy_is_off_by_default_and_its_machine_is_checked_by_the_schema():
    assert params.DEFAULTS.deploy == {}
    assert params.parse({"deploy": '{"machine_type": "a3-highgpu-1g"}'}, text=True).deploy == {
        "machine_type": "a3-highgpu-1g"}
    with pytest.raises(ValueError) as info:
        params.parse({"deploy": {"machine_type": "g4-standard-48", "accelerator_type": "NVIDIA_L4"}})
    assert "deploy.accelerator_type/accelerator_count='NVIDIA_L4 x 1': machine type g4-standard-48 carries 1 x " \
           "NVIDIA_RTX_PRO_6000" in str(info.value)


def test_deploy_with_a_local_registry_is_refused_before_the_run(tmp_path):
    local = {"registry": str(tmp_path / "registry.sqlite"), "backend": {"kind": "local"}}
    check_run(local)  # off: accepted
    with pytest.raises(ValueError, match=r"deploy=\{'machine_type': 'g4-standard-48'\}: deploys to a Vertex endpoint, "
                                         r"which needs registry=vertex .*; fix: pass deploy=\{\} for a local run"):
        check_run({**local, "deploy": {"machine_type": "g4-standard-48"}})
    check_run({**CLOUD, "deploy": {"machine_type": "g4-standard-48"}}, pipeline_root="gs://my-bucket/root",
              context="submit")  # with Vertex: accepted


def test_deploy_model_runs_after_register_model_on_vertex_only(tmp_path):
    path = pipeline.compile_pipeline(str(tmp_path / "p.yaml"), None)
    spec = yaml.safe_load(Path(path).read_text())
    groups = {name: c for name, c in spec["components"].items() if name.startswith("comp-condition")}
    (holder,) = [c for c in groups.values() if "deploy-model" in c["dag"]["tasks"]]
    inputs = holder["dag"]["tasks"]["deploy-model"]["inputs"]["parameters"]
    assert inputs["model_version"]["componentInputParameter"] == "pipelinechannel--register-model-Output"
    assert inputs["deploy"]["componentInputParameter"] == "pipelinechannel--deploy"
    (outer,) = [c for c in groups.values() if "register-model" in c["dag"]["tasks"]]
    (condition,) = [t for t in outer["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert condition["triggerPolicy"]["condition"] == "inputs.parameter_values['pipelinechannel--registry'] == 'vertex'"
    # what the condition hands the step as its model_version: register_model's output (the version's resource name)
    assert condition["inputs"]["parameters"]["pipelinechannel--register-model-Output"]["taskOutputParameter"] == {
        "outputParameterKey": "Output", "producerTask": "register-model"}
    assert spec["components"]["comp-deploy-model"]["outputDefinitions"]["artifacts"]["endpoint"][
        "artifactType"]["schemaTitle"] == "google.VertexEndpoint"


def test_the_step_deploys_the_registered_version_or_nothing(fake, tmp_path, monkeypatch):
    r = vertex_models.register_vertex_model(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4-pets", artifact_uri="gs://bkt/run-1/adapter",
        serving_container_image_uri=SERVING, parent_model=None, version_aliases=[], labels={}, run_id="run-1",
        out=lambda _: None, **cloud(fake))
    version = f"{r['resource_name']}@{r['version_id']}"
    before = len(fake.requests)
    assert deploy_registered(version, {}, project=PROJECT, region=REGION, run_id="run-1", model_name="m",
                             **cloud(fake)) == "off"
    assert len(fake.requests) == before  # off: no request at all
    artifact = Artifact(uri=str(tmp_path / "endpoint"))
    # the component's body as the step runs it, its one library call pointed at the fake
    monkeypatch.setattr(vertex_endpoints, "deploy_registered", functools.partial(deploy_registered, **cloud(fake)))
    endpoint = deploy_model.python_func(model_version=version, model_name="petqlora-gemma4-pets", project=PROJECT,
                                        deploy={"machine_type": "a3-highgpu-1g"}, region=REGION,
                                        run_id="petqlora-gemma4-pets-20261202", endpoint=artifact)
    stored = fake.endpoints[endpoint]
    assert stored["labels"]["run_id"] == "petqlora-gemma4-pets-20261202"
    assert stored["displayName"] == "petqlora-gemma4-pets"
    assert stored["deployedModels"][0]["dedicatedResources"]["machineSpec"]["machineType"] == "a3-highgpu-1g"
    assert artifact.metadata["resourceName"] == endpoint and artifact.uri == f"https://{REGION}-aiplatform.googleapis.com/v1/{endpoint}"
    assert endpoint.startswith(f"{LOCATION}/endpoints/petqlora-")
