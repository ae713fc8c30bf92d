"""Serving a registered version on Vertex: deploy (an endpoint per version, the exact machine, all the traffic)
and batch prediction (jsonl, file list or a folder of images). The requests are built purely and compared with
literals; the live calls go through the real aiplatform clients to the REST fake, which receives exactly what
the dry runs print; bad inputs are refused before any request, by the library and by the command line."""

import json

import pytest

import pipeline
from petqlora.cloud import vertex_batch, vertex_endpoints, vertex_models
from petqlora.cloud.serving_machines import ServingMachine, parse_machine

from vertex_support import ALT, LOCATION, PROJECT, REGION, as_sent, cloud, fake, no_credentials, sent  # noqa: F401

IMAGE = "us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0"
SA = "serving@my-proj.iam.gserviceaccount.com"
H100 = {"machine_type": "a3-highgpu-1g", "accelerator_type": "NVIDIA_H100_80GB", "accelerator_count": 1,
        "min_replica_count": 1, "max_replica_count": 2, "service_account": SA}
QUIET = dict(out=lambda _: None)
H100_ENUM = 13  # AcceleratorType.NVIDIA_H100_80GB: the REST transports send enums as numbers


def _registered(fake, run_id="run-1") -> str:
    """A version registered through the real SDK: projects/.../models/ID@N, what register_model outputs."""
    r = vertex_models.register_vertex_model(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4-pets", artifact_uri=f"gs://bkt/{run_id}/adapter",
        serving_container_image_uri=IMAGE, parent_model=None, version_aliases=["candidate"], labels={}, run_id=run_id,
        **QUIET, **cloud(fake))
    return f"{r['resource_name']}@{r['version_id']}"


# ------------------------------------------------------------------------------------------ machines


def test_the_default_machine_is_one_rtx_pro_6000():
    assert ServingMachine() == parse_machine({}) == ServingMachine(
        machine_type="g4-standard-48", accelerator_type="NVIDIA_RTX_PRO_6000", accelerator_count=1)


@pytest.mark.parametrize("values, words", [
    ({"machine_type": "g4-standard-48", "accelerator_type": "NVIDIA_H100_80GB"},
     "machine type g4-standard-48 carries 1 x NVIDIA_RTX_PRO_6000"),
    ({"machine_type": "g4-standard-96", "accelerator_count": 1}, "carries 2 x NVIDIA_RTX_PRO_6000"),
    ({"machine_type": "g2-standard-12", "accelerator_type": "NVIDIA_L4"}, "has 24 GB, under the 40 GB"),
    ({"machine_type": "n1-standard-8"}, "machine_type='n1-standard-8': must be one of"),
    ({"min_replica_count": 3, "max_replica_count": 2}, "max_replica_count=2: must be >= min_replica_count (3)"),
    ({"accelerator_count": 0}, "accelerator_count=0: must be >= 1"),
    ({"gpus": 1}, "gpus=1: is not a known field"),
    ({"service_account": "petqlora-serve"}, "service_account='petqlora-serve': must be a service account email"),
], ids=["wrong-gpu", "wrong-count", "l4-too-small", "unknown-machine", "replicas", "zero", "unknown-field",
        "service-account"])
def test_machine_pairs_are_checked(values, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        parse_machine(values)


def test_a_machine_s_problems_each_name_a_fix():
    from petqlora.cloud.serving_machines import machine_problems

    problems = machine_problems({"max_replica_count": True, "min_replica_count": 0})
    assert len(problems) == 2 and all("; fix: " in item for item in problems), problems
    assert "max_replica_count=True: must be an integer; fix: e.g. 1 (the default)" in problems
    sa = "petqlora-serve@my-proj.iam.gserviceaccount.com"
    assert parse_machine({"service_account": sa}).service_account == sa and parse_machine({}).service_account == ""


# ------------------------------------------------------------------------------------------ deploy


NOTE = "; a dry run makes no live lookup, so this request is not built"
UNDEPLOY = {"method": "UndeployModel", "needs_lookup": "one per deployed model of another version of this model that "
            "GetEndpoint lists (0% of the traffic once the new one takes it all), after DeployModel" + NOTE}


def test_deploy_requests_are_built_purely():
    version = f"{LOCATION}/models/42@3"
    payload = vertex_endpoints.deploy_requests(version, project=PROJECT, region=REGION, machine=H100,
                                               endpoint_display_name="petqlora-gemma4-pets")
    endpoint = f"{LOCATION}/endpoints/petqlora-42"
    assert payload == {"requests": [
        {"method": "GetModel", "http": f"GET /v1/{LOCATION}/models/42%403", "query": ALT},
        {"method": "GetEndpoint", "http": f"GET /v1/{endpoint}", "query": ALT,
         "then": "CreateEndpoint when it answers 404; DeployModel unless the version is deployed there"},
        {"method": "CreateEndpoint", "http": f"POST /v1/{LOCATION}/endpoints", "query": {**ALT, "endpointId": "petqlora-42"},
         "body": {"displayName": "petqlora-gemma4-pets", "labels": {"model_id": "42"}}},
        {"method": "DeployModel", "http": f"POST /v1/{endpoint}:deployModel", "query": ALT, "body": {
            "deployedModel": {
                "model": version, "displayName": "v3", "serviceAccount": SA,
                "dedicatedResources": {
                    "machineSpec": {"machineType": "a3-highgpu-1g", "acceleratorType": H100_ENUM, "acceleratorCount": 1},
                    "minReplicaCount": 1, "maxReplicaCount": 2}},
            "trafficSplit": {"0": 100}}},
        UNDEPLOY,
    ]}
    # without a display name, CreateEndpoint's comes from GetModel; with --keep-previous nothing is undeployed
    kept = vertex_endpoints.deploy_requests(version, project=PROJECT, region=REGION, keep_previous=True)["requests"]
    assert [r["method"] for r in kept] == ["GetModel", "GetEndpoint", "CreateEndpoint", "DeployModel"]
    assert kept[2]["needs_lookup"].startswith("endpoint.display_name is the model's, which GetModel returns")


def test_a_deploy_by_display_name_says_which_calls_need_a_lookup():
    payload = vertex_endpoints.deploy_requests("petqlora-gemma4-pets@candidate", project=PROJECT, region=REGION)
    assert [r["method"] for r in payload["requests"]] == ["ListModels", "GetModel", "GetEndpoint", "DeployModel",
                                                          "UndeployModel"]
    assert payload["requests"][0]["query"]["filter"] == 'display_name="petqlora-gemma4-pets"'
    assert all("needs_lookup" in r for r in payload["requests"][1:])
    # what the lookups cannot change is shown: the default machine and the traffic
    assert payload["requests"][3]["request"]["deployed_model"]["dedicated_resources"]["machine_spec"] == {
        "machine_type": "g4-standard-48", "accelerator_type": "NVIDIA_RTX_PRO_6000", "accelerator_count": 1}


def test_deploy_creates_the_endpoint_and_deploys_the_exact_machine_as_the_dry_run_prints(fake):
    version = _registered(fake)
    start = len(fake.requests)
    args = dict(project=PROJECT, region=REGION, machine=H100, endpoint_display_name="pets")
    result = vertex_endpoints.deploy_model_version(version, **args, **QUIET, **cloud(fake))
    dry = vertex_endpoints.deploy_requests(version, **args)["requests"]
    calls = [c for c in sent(fake, start) if "/operations/" not in c["http"]]  # the SDK polls the operations
    assert calls[0] == as_sent(dry[0])
    assert calls[1] == as_sent(dry[1])  # answered 404: the endpoint is created
    assert calls[2:4] == [as_sent(dry[2]), as_sent(dry[3])]
    assert calls[4:] == [as_sent(dry[1])]  # the endpoint read again: no earlier version to undeploy
    model_id = version.rsplit("/", 1)[1].split("@")[0]
    endpoint = fake.endpoints[result["endpoint"]]
    (deployed,) = endpoint["deployedModels"]
    assert deployed["dedicatedResources"] == {
        "machineSpec": {"machineType": "a3-highgpu-1g", "acceleratorType": H100_ENUM, "acceleratorCount": 1},
        "minReplicaCount": 1, "maxReplicaCount": 2}
    assert deployed["serviceAccount"] == SA and endpoint["trafficSplit"] == {deployed["id"]: 100}
    assert result == {"endpoint": f"{LOCATION}/endpoints/petqlora-{model_id}", "deployed_model_id": deployed["id"],
                      "model": version.split("@")[0], "version_id": "1", "reused": False, "undeployed": []}


def test_a_retried_deploy_finds_its_endpoint_and_version_and_pays_nothing_twice(fake):
    version = _registered(fake)
    first = vertex_endpoints.deploy_model_version(version, project=PROJECT, region=REGION, **QUIET, **cloud(fake))
    again = vertex_endpoints.deploy_model_version(version, project=PROJECT, region=REGION, **QUIET, **cloud(fake))
    assert again == {**first, "reused": True}
    assert fake.count("POST", "/endpoints") == 1 and fake.count("POST", ":deployModel") == 1
    assert fake.endpoints[first["endpoint"]]["displayName"] == "petqlora-gemma4-pets"  # the model's display name


def test_a_new_version_replaces_the_last_on_the_models_endpoint(fake):
    first = vertex_endpoints.deploy_model_version(_registered(fake), project=PROJECT, region=REGION,
                                                  **QUIET, **cloud(fake))
    second = _registered(fake, "run-2")  # version 2 of the same model, here resolved by display name
    result = vertex_endpoints.deploy_model_version("petqlora-gemma4-pets@2", project=PROJECT, region=REGION,
                                                   **QUIET, **cloud(fake))
    endpoint = fake.endpoints[first["endpoint"]]
    assert result["endpoint"] == first["endpoint"] and result["model"] == second.split("@")[0]
    assert result["undeployed"] == [first["deployed_model_id"]]  # it would bill at 0% traffic
    assert [d["modelVersionId"] for d in endpoint["deployedModels"]] == ["2"]
    assert endpoint["trafficSplit"] == {result["deployed_model_id"]: 100}
    third = _registered(fake, "run-3")
    kept = vertex_endpoints.deploy_model_version(third, project=PROJECT, region=REGION, keep_previous=True,
                                                 endpoint=first["endpoint"], **QUIET, **cloud(fake))
    assert kept["undeployed"] == [] and [d["modelVersionId"] for d in endpoint["deployedModels"]] == ["2", "3"]
    assert endpoint["trafficSplit"] == {kept["deployed_model_id"]: 100}


def test_deploy_refuses_what_cannot_serve(fake):
    version = _registered(fake)
    with pytest.raises(ValueError, match="no Vertex model has this display name"):
        vertex_endpoints.deploy_model_version("nope", project=PROJECT, region=REGION, **QUIET, **cloud(fake))
    with pytest.raises(ValueError, match="@7: no such version"):
        vertex_endpoints.deploy_model_version(version.replace("@1", "@7"), project=PROJECT, region=REGION,
                                              **QUIET, **cloud(fake))
    with pytest.raises(ValueError, match="endpoint='123': no such endpoint"):
        vertex_endpoints.deploy_model_version(version, project=PROJECT, region=REGION, endpoint="123",
                                              **QUIET, **cloud(fake))
    assert fake.count("POST", ":deployModel") == 0


# ------------------------------------------------------------------------------------------ batch prediction


def test_the_batch_prediction_request_is_built_purely():
    version = f"{LOCATION}/models/42@3"
    payload = vertex_batch.batch_prediction_requests(
        version, project=PROJECT, region=REGION, input_uri="gs://pets-in/test/images.txt",
        output_uri_prefix="gs://pets-out/predictions", machine=H100, labels={"run": "Nov 2026"})
    assert payload["requests"][1] == {
        "method": "CreateBatchPredictionJob", "http": f"POST /v1/{LOCATION}/batchPredictionJobs", "query": ALT,
        "body": {
            "displayName": "petqlora-batch-prediction", "model": version, "labels": {"run": "nov_2026"},
            "inputConfig": {"instancesFormat": "file-list", "gcsSource": {"uris": ["gs://pets-in/test/images.txt"]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": "gs://pets-out/predictions"}},
            "dedicatedResources": {
                "machineSpec": {"machineType": "a3-highgpu-1g", "acceleratorType": H100_ENUM, "acceleratorCount": 1},
                "startingReplicaCount": 1, "maxReplicaCount": 2},
            "manualBatchTuningParameters": {"batchSize": 16},
            "serviceAccount": SA}}


@pytest.mark.parametrize("uri, fmt", [("gs://pets-in/x.jsonl", "jsonl"), ("gs://pets-in/x.txt", "file-list"),
                                      ("gs://pets-in/images/", "folder")])
def test_input_formats(uri, fmt):
    assert vertex_batch.input_format(uri) == fmt


def test_a_folder_is_read_through_a_file_list_written_under_the_output():
    payload = vertex_batch.batch_prediction_requests(f"{LOCATION}/models/42@3", project=PROJECT, region=REGION,
                                                     input_uri="gs://pets-in/images/", output_uri_prefix="gs://pets-out/p/")
    listing, create = payload["requests"][1:]
    assert listing["lists"] == "gs://pets-in/images/" and listing["writes"] == "gs://pets-out/p/inputs/file-list.txt"
    assert create["body"]["inputConfig"] == {"instancesFormat": "file-list",
                                             "gcsSource": {"uris": ["gs://pets-out/p/inputs/file-list.txt"]}}


def test_batch_predict_sends_what_the_dry_run_prints(fake):
    version = _registered(fake)
    args = dict(project=PROJECT, region=REGION, input_uri="gs://pets-in/test.jsonl",
                output_uri_prefix="gs://pets-out/predictions", machine=H100)
    start = len(fake.requests)
    result = vertex_batch.batch_predict(version, **args, **QUIET, **cloud(fake))
    dry = vertex_batch.batch_prediction_requests(version, **args)["requests"]
    assert sent(fake, start) == [as_sent(r) for r in dry]
    assert result == {"name": next(iter(fake.batch_jobs)), "state": "JOB_STATE_PENDING", "model": version,
                      "input": "gs://pets-in/test.jsonl", "format": "jsonl"}
    # by display name and alias: the same job, the version found by the lookups
    by_name = vertex_batch.batch_predict("petqlora-gemma4-pets@candidate", **args, **QUIET, **cloud(fake))
    assert by_name["model"] == version


# ------------------------------------------------------------------------------------------ command line


def test_the_dry_run_commands_print_the_requests_without_credentials(no_credentials, capsys):
    version = f"{LOCATION}/models/42@3"
    assert pipeline.main(["deploy", version, "--project", PROJECT, "--region", REGION, "--machine-type",
                          "a3-highgpu-1g", "--accelerator-type", "NVIDIA_H100_80GB", "--max-replica-count", "2",
                          "--service-account", SA, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == vertex_endpoints.deploy_requests(
        version, project=PROJECT, region=REGION, machine=H100)
    assert pipeline.main(["batch-predict", version, "--project", PROJECT, "--region", REGION, "--input",
                          "gs://pets-in/x.jsonl", "--output", "gs://pets-out/p", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == vertex_batch.batch_prediction_requests(
        version, project=PROJECT, region=REGION, input_uri="gs://pets-in/x.jsonl", output_uri_prefix="gs://pets-out/p")


@pytest.mark.parametrize("argv, words", [
    (["deploy", "m@3", "--machine-type", "g4-standard-48", "--accelerator-type", "NVIDIA_L4"],
     "carries 1 x NVIDIA_RTX_PRO_6000"),
    (["deploy", "projects/other/locations/us-central1/models/1@2"], "not in my-proj/us-central1"),
    (["deploy", "m@Not An Alias"], "neither a number nor an alias"),
    (["deploy", "m@"], "model='m@': ends in '@' without a version"),
    (["deploy", "m", "--min-replica-count", "0"], "min_replica_count=0: must be >= 1"),
    (["deploy", "m", "--service-account", "bogus"], "service_account='bogus': must be a service account email"),
    (["batch-predict", "m", "--input", "/data/images/", "--output", "gs://pets-out/p"], "input='/data/images/'"),
    (["batch-predict", "m", "--input", "gs://pets-in/x.csv", "--output", "gs://pets-out/p"],
     "- input='gs://pets-in/x.csv': not a .jsonl file"),
    (["batch-predict", "m", "--input", "gs://pets-in/x.jsonl", "--output", "gs://pets-out/p",
      "--instances-per-request", "64"], "instances_per_request=64: must be an integer in 1-32"),
], ids=["pair", "project", "alias", "empty-version", "replicas", "service-account", "local-input", "format", "batch-size"])
def test_bad_inputs_end_in_one_message_and_exit_2(argv, words, no_credentials, capsys):
    assert pipeline.main([*argv, "--project", PROJECT, "--region", REGION, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and err.startswith("error: invalid arguments for")


def test_a_folder_of_images_becomes_the_file_list_the_job_reads(fake, monkeypatch):
    """The folder listed through the real storage client (against gcp-storage-emulator), its images written as
    a file list under the output, and the job pointed at that list."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage as gcs

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="pets-bkt")
    server.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server._api._httpd.server_address[1]}")
        client = gcs.Client(project="test-project", credentials=AnonymousCredentials())
        bucket = client.bucket("pets-bkt")
        for name in ("test/a.jpg", "test/sub/b.PNG", "test/notes.txt", "other/c.jpg"):
            bucket.blob(name).upload_from_string(b"x")
        version = _registered(fake)
        result = vertex_batch.batch_predict(version, project=PROJECT, region=REGION, input_uri="gs://pets-bkt/test/",
                                            output_uri_prefix="gs://pets-bkt/out", storage_client=client,
                                            **QUIET, **cloud(fake))
        written = bucket.blob("out/inputs/file-list.txt").download_as_text()
        with pytest.raises(ValueError, match="no image .* under this folder"):
            vertex_batch.batch_predict(version, project=PROJECT, region=REGION, input_uri="gs://pets-bkt/other/sub/",
                                       output_uri_prefix="gs://pets-bkt/out2", storage_client=client,
                                       **QUIET, **cloud(fake))
    finally:
        server.stop()
    assert written == "gs://pets-bkt/test/a.jpg\ngs://pets-bkt/test/sub/b.PNG\n"
    (job,) = fake.batch_jobs.values()
    assert job["inputConfig"] == {"instancesFormat": "file-list",
                                  "gcsSource": {"uris": ["gs://pets-bkt/out/inputs/file-list.txt"]}}
    assert result["format"] == "file-list" and result["input"] == "gs://pets-bkt/out/inputs/file-list.txt"
