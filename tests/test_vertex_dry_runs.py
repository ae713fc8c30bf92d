"""Every Vertex dry run prints the REST calls the client library makes (verb, path, query, body), built from
the library's own request types and HTTP rules, or says plainly which call it cannot build without a live
lookup. Each is compared with a literal, and with what the real client sends to the fake for the same
command."""

import json

import pytest

from petqlora.cloud import vertex_lineage, vertex_models, vertex_schedules
from petqlora.cloud.vertex_common import needs_lookup, rest_request

from vertex_support import ALT, LOCATION, PROJECT, REGION, STORE, as_sent, cloud, fake, no_credentials, sent  # noqa: F401

SCHEDULE = f"{LOCATION}/schedules/42"


def test_rest_request_is_the_http_rule_of_the_rpc():
    from google.cloud.aiplatform.compat.types import schedule_service

    request = schedule_service.PauseScheduleRequest(name=SCHEDULE)
    assert rest_request("schedule_service", "PauseSchedule", request) == {
        "method": "PauseSchedule", "http": f"POST /v1/{SCHEDULE}:pause", "query": ALT, "body": {}}
    listing = schedule_service.ListSchedulesRequest(parent=LOCATION, filter='state="ACTIVE"', page_size=5)
    assert rest_request("schedule_service", "ListSchedules", listing) == {  # fields not in the path: the query
        "method": "ListSchedules", "http": f"GET /v1/{LOCATION}/schedules",
        "query": {"filter": 'state="ACTIVE"', "pageSize": 5, **ALT}}
    with pytest.raises(ValueError):  # a name the rule's path template does not match is refused, not guessed
        rest_request("schedule_service", "PauseSchedule", schedule_service.PauseScheduleRequest(name="42"))


def test_needs_lookup_says_so_plainly():
    assert needs_lookup("GetModel", "its name comes from ListModels") == {
        "method": "GetModel",
        "needs_lookup": "its name comes from ListModels; a dry run makes no live lookup, so this request is not built"}


def test_list_schedules_dry_run(no_credentials):
    lines = []
    payload = vertex_schedules.list_schedules(project=PROJECT, region=REGION, dry_run=True, out=lines.append)
    expected = {"requests": [{"method": "ListSchedules", "http": f"GET /v1/{LOCATION}/schedules", "query": ALT}]}
    assert payload == expected and [json.loads(line) for line in lines] == [expected]


@pytest.mark.parametrize("action, name, verb, suffix, body", [
    ("pause", "42", "POST", ":pause", {}),  # a bare ID becomes the full name
    ("resume", SCHEDULE, "POST", ":resume", {}),
    ("delete", "42", "DELETE", "", None),  # DeleteSchedule's rule has no body
], ids=["pause", "resume", "delete"])
def test_change_schedule_dry_runs(action, name, verb, suffix, body, no_credentials):
    lines = []
    payload = vertex_schedules.change_schedule(action, name, project=PROJECT, region=REGION, dry_run=True,
                                               out=lines.append)
    act = {"method": f"{action.capitalize()}Schedule", "http": f"{verb} /v1/{SCHEDULE}{suffix}", "query": ALT}
    if body is not None:
        act["body"] = body
    expected = {"requests": [{"method": "GetSchedule", "http": f"GET /v1/{SCHEDULE}", "query": ALT}, act]}
    assert payload == expected and [json.loads(line) for line in lines] == [expected]


@pytest.mark.parametrize("action", ["pause", "resume", "delete"])
def test_schedule_dry_runs_are_what_the_client_sends(action, fake):
    fake.schedules[SCHEDULE] = {"name": SCHEDULE, "cron": "0 3 * * 1", "displayName": "weekly", "state": "ACTIVE",
                                "createPipelineJobRequest": {}}
    common = dict(project=PROJECT, region=REGION, out=lambda _: None)
    dry = vertex_schedules.change_schedule(action, "42", dry_run=True, **common)
    vertex_schedules.change_schedule(action, "42", **common, **cloud(fake))
    assert sent(fake) == [as_sent(r) for r in dry["requests"]]
    start = len(fake.requests)
    vertex_schedules.list_schedules(**common, **cloud(fake))
    assert sent(fake, start) == [as_sent(r) for r in vertex_schedules.list_schedules(dry_run=True, **common)["requests"]]


def test_lineage_dry_run_from_a_model_version_says_which_calls_need_a_lookup():
    lines = []
    payload = vertex_lineage.lineage_from_vertex("petqlora-gemma4-pets@3", project=PROJECT, region=REGION,
                                                 dry_run=True, out=lines.append)
    note = "; a dry run makes no live lookup, so this request is not built"
    assert payload == {"requests": [
        {"method": "ListModels", "http": f"GET /v1/{LOCATION}/models",
         "query": {"filter": 'display_name="petqlora-gemma4-pets"', **ALT}},
        {"method": "GetModel", "needs_lookup": "its name is the model ListModels finds, @3" + note},
        {"method": "ListArtifacts",
         "needs_lookup": "its filter is the artifact URI GetModel returns (less its /adapter)" + note},
        {"method": "QueryArtifactLineageSubgraph", "needs_lookup": "its artifact is the one ListArtifacts finds" + note},
    ]}
    assert json.loads(lines[0]) == payload


def test_lineage_dry_runs_from_a_uri_and_from_an_artifact_name():
    by_uri = vertex_lineage.lineage_requests("gs://b/adapter", project=PROJECT, region=REGION)
    assert by_uri["requests"][0] == {
        "method": "ListArtifacts", "http": f"GET /v1/{STORE}/artifacts",
        "query": {"filter": 'uri="gs://b/adapter"', "orderBy": "create_time desc", **ALT}}
    assert by_uri["requests"][1]["needs_lookup"].startswith("its artifact is the one ListArtifacts finds")
    name = f"{STORE}/artifacts/7"
    assert vertex_lineage.lineage_requests(name, project=PROJECT, region=REGION, max_hops=5) == {"requests": [
        {"method": "QueryArtifactLineageSubgraph", "http": f"GET /v1/{name}:queryArtifactLineageSubgraph",
         "query": {"maxHops": 5, **ALT}}]}
    with pytest.raises(ValueError, match="version="):
        vertex_lineage.lineage_requests("model@Not An Alias", project=PROJECT, region=REGION)


def test_lineage_dry_run_is_what_the_client_sends(fake):
    fake.artifacts = [{"name": f"{STORE}/artifacts/7", "uri": "gs://b/adapter", "displayName": "adapter",
                       "schemaTitle": "system.Model", "createTime": "2026-11-02T00:00:00Z"}]
    vertex_lineage.lineage_from_vertex("gs://b/adapter", project=PROJECT, region=REGION, max_hops=4, **cloud(fake))
    dry = vertex_lineage.lineage_requests("gs://b/adapter", project=PROJECT, region=REGION, max_hops=4)
    assert sent(fake)[0] == as_sent(dry["requests"][0])
    # the call the dry run could not build is the one the lookup's answer made possible
    by_name = vertex_lineage.lineage_requests(f"{STORE}/artifacts/7", project=PROJECT, region=REGION, max_hops=4)
    assert sent(fake)[1] == as_sent(by_name["requests"][0])


def test_model_lookup_dry_run_is_what_the_client_sends(fake):
    assert vertex_models.model_version_uri("petqlora-gemma4-pets", "3", project=PROJECT, region=REGION,
                                           **cloud(fake)) is None  # no such model
    assert sent(fake) == [as_sent(vertex_models.list_models_request(PROJECT, REGION, "petqlora-gemma4-pets"))]


def test_lineage_of_a_model_version_follows_the_lookups_the_dry_run_names(fake):
    image = "us-docker.pkg.dev/p/r/trainer:0.1.0"
    registered = vertex_models.register_vertex_model(
        project=PROJECT, region=REGION, display_name="petqlora-gemma4-pets", serving_container_image_uri=image,
        artifact_uri="gs://b/run-1/train-adapter/adapter/adapter", parent_model=None, version_aliases=[], labels={},
        run_id="run-1", out=lambda _: None, **cloud(fake))
    fake.artifacts = [{"name": f"{STORE}/artifacts/7", "uri": "gs://b/run-1/train-adapter/adapter",
                       "displayName": "adapter", "schemaTitle": "system.Model", "createTime": "2026-11-02T00:00:00Z"}]
    start = len(fake.requests)
    graph, uri = vertex_lineage.lineage_of("petqlora-gemma4-pets@1", project=PROJECT, region=REGION, **cloud(fake))
    assert uri == "gs://b/run-1/train-adapter/adapter"  # the train step's Model artifact, not its /adapter folder
    assert [a["name"] for a in graph["artifacts"]] == [f"{STORE}/artifacts/7"]
    dry = vertex_lineage.lineage_requests("petqlora-gemma4-pets@1", project=PROJECT, region=REGION)["requests"]
    calls = sent(fake, start)
    assert calls[0] == as_sent(dry[0])  # built offline: ListModels
    # the three it could not build, as the lookups' answers made them
    assert [c["http"] for c in calls[1:]] == [
        f"GET /v1/{registered['resource_name']}@1", f"GET /v1/{STORE}/artifacts",
        f"GET /v1/{STORE}/artifacts/7:queryArtifactLineageSubgraph"]
    assert [r["method"] for r in dry[1:]] == ["GetModel", "ListArtifacts", "QueryArtifactLineageSubgraph"]
    with pytest.raises(Exception, match="no Vertex model is named 'nope'"):
        vertex_lineage.lineage_of("nope", project=PROJECT, region=REGION, **cloud(fake))
