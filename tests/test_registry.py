"""LocalRegistry: Vertex Model Registry semantics on SQLite, concurrency across processes, lineage text."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from petqlora.cloud.vertex_lineage import lineage_from_vertex
from petqlora.registry.lineage import format_lineage
from petqlora.registry.local import LocalRegistry, ModelVersion, UnknownModelError

from fakes.vertex_api import FakeVertexAPI

NAME = "petqlora-gemma4"
LINEAGE = {
    "dataset": {"uri": "runs/r1/dataset", "sha256": "a" * 64, "inputs": {"source": "synthetic", "seed": 0}},
    "token_boundary_report": {
        "uri": "runs/r1/report.json", "sha256": "b" * 64, "inputs": {"dataset": "a" * 12},
    },
    "adapter": {"uri": "runs/r1/adapter", "sha256": "c" * 64, "inputs": {"rank": 16, "epochs": 3}},
    "evaluation": {"uri": "runs/r1/metrics.json", "sha256": "d" * 64, "inputs": {"split": "test"}},
}


@pytest.fixture
def reg(tmp_path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry.sqlite")


def _register(reg: LocalRegistry, run: str, **kw) -> ModelVersion:
    return reg.register(NAME, f"runs/{run}/adapter", run_id=run, metrics={"accuracy": 0.5}, **kw)


def test_versions_count_up_per_model_and_first_is_default(reg):
    v1 = _register(reg, "r1", labels={"base": "gemma-4"}, lineage=LINEAGE)
    v2 = _register(reg, "r2", make_default=False)
    other = reg.register("other-model", "x", run_id="r1", metrics={})
    assert (v1.version, v2.version, other.version) == (1, 2, 1)
    assert v1.ref == f"{NAME}@1"
    assert v1.aliases == ("default",)
    assert v2.aliases == ()  # make_default=False: the default stays on version 1
    assert reg.get(NAME).version == 1
    assert reg.default_version(NAME).version == 1
    assert reg.get(f"{NAME}@1") == v1
    assert v1.labels == {"base": "gemma-4"} and v1.metrics == {"accuracy": 0.5} and v1.lineage == LINEAGE
    assert [v.version for v in reg.list_versions(NAME)] == [1, 2]
    assert reg.list_versions("never-registered") == []
    assert reg.default_version("never-registered") is None
    assert reg.model_names() == ["other-model", NAME]


def test_aliases_move_and_make_default_moves_default(reg):
    _register(reg, "r1", aliases=["candidate", "champion"])
    v2 = _register(reg, "r2", aliases=["candidate"])
    v1 = reg.get(f"{NAME}@1")
    assert v1.aliases == ("champion",)  # "candidate" and "default" moved to version 2
    assert v2.aliases == ("candidate", "default")
    assert reg.get(f"{NAME}@candidate").version == 2
    assert reg.get(f"{NAME}@champion").version == 1
    assert reg.get(NAME).version == 2


def test_same_run_id_returns_the_existing_version(reg):
    v1 = _register(reg, "r1", aliases=["candidate"])
    again = reg.register(NAME, "somewhere/else", run_id="r1", metrics={"accuracy": 0.9}, aliases=["champion"])
    assert again == v1  # nothing changed: same version, aliases, metrics
    assert [v.version for v in reg.list_versions(NAME)] == [1]
    with pytest.raises(UnknownModelError):
        reg.get(f"{NAME}@champion")


def test_unknown_refs_raise_key_error_listing_what_exists(reg):
    _register(reg, "r1", aliases=["candidate"])
    with pytest.raises(KeyError) as err:
        reg.get("nope")
    assert "no model named 'nope'" in str(err.value) and NAME in str(err.value)
    with pytest.raises(KeyError) as err:
        reg.get(f"{NAME}@7")
    assert "versions: 1" in str(err.value) and "candidate" in str(err.value)
    with pytest.raises(KeyError, match="champion"):
        reg.get(f"{NAME}@champion")
    empty = LocalRegistry(reg.db_path.parent / "empty.sqlite")
    with pytest.raises(KeyError, match="none yet"):
        empty.get("anything")


def test_register_validates_every_argument_at_once(reg):
    with pytest.raises(ValueError) as err:
        reg.register(
            "bad@name", "", run_id="", metrics={"accuracy": float("nan")},
            labels={"Accuracy": "0.87"}, aliases=["1", "Bad_alias"], lineage={"x": object()},
        )
    message = str(err.value)
    for fragment in ("name='bad@name'", "artifact_uri=''", "run_id=''", "metrics['accuracy']",
                     "labels['Accuracy']", "aliases='1'", "aliases='Bad_alias'", "lineage=", "fix:"):
        assert fragment in message
    assert reg.model_names() == []


def test_schema_uses_wal(reg):
    with sqlite3.connect(reg.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _worker(db_path: str, worker: int, runs: int, barrier) -> None:
    registry = LocalRegistry(db_path)  # every process opens the fresh file itself
    barrier.wait()
    for i in range(runs):
        registry.register(NAME, f"w{worker}/{i}", run_id=f"w{worker}-r{i}", metrics={"accuracy": i / runs})
        # a retried step in another process must not add a version
        registry.register(NAME, f"w{worker}/{i}", run_id=f"w{worker}-r{i}", metrics={"accuracy": 0.0})


def test_concurrent_registration_from_processes_has_no_gaps_or_duplicates(tmp_path):
    db, processes, runs = str(tmp_path / "shared.sqlite"), 8, 6
    ctx = multiprocessing.get_context("spawn")  # no inherited sqlite handles or locks
    barrier = ctx.Barrier(processes)
    workers = [ctx.Process(target=_worker, args=(db, w, runs, barrier)) for w in range(processes)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=120)
    assert [p.exitcode for p in workers] == [0] * processes
    versions = LocalRegistry(db).list_versions(NAME)
    assert [v.version for v in versions] == list(range(1, processes * runs + 1))
    assert len({v.run_id for v in versions}) == processes * runs
    assert sum("default" in v.aliases for v in versions) == 1


def test_format_lineage_prints_the_chain_in_order(reg):
    version = _register(reg, "r1", aliases=["candidate"], lineage=LINEAGE, labels={"base": "gemma-4"})
    text = format_lineage(version)
    order = [text.index(t) for t in ("dataset", "token-boundary report", "adapter\n", "evaluation",
                                     f"registered version {NAME}@1")]
    assert order == sorted(order)
    for link in LINEAGE.values():
        assert link["uri"] in text and link["sha256"] in text
    assert "source=synthetic" in text and "rank=16" in text
    assert "accuracy=0.5" in text and "candidate" in text and "runs/r1/adapter" in text
    assert "(not recorded)" not in text


def test_format_lineage_copes_with_missing_links(reg):
    partial = {"dataset": {"uri": "gs://b/data"}, "adapter": None}
    text = format_lineage(_register(reg, "r1", lineage=partial))
    assert "token-boundary report: (not recorded)" in text
    assert "adapter: (not recorded)" in text and "evaluation: (not recorded)" in text
    assert "gs://b/data" in text and "sha256: (not recorded)" in text
    assert "(not recorded)" in format_lineage(_register(reg, "r2"))


def test_lineage_from_vertex_dry_run_prints_the_requests():
    lines = []
    payload = lineage_from_vertex("gs://b/adapter", project="my-proj", region="us-central1", dry_run=True,
                                  out=lines.append)
    methods = [r["method"] for r in payload["requests"]]
    assert methods == ["ListArtifacts", "QueryArtifactLineageSubgraph"]
    assert payload["requests"][0]["query"]["filter"] == 'uri="gs://b/adapter"'  # the REST call (test_vertex_dry_runs)
    assert "needs_lookup" in payload["requests"][1]  # its artifact is what ListArtifacts finds
    assert "QueryArtifactLineageSubgraph" in lines[0]
    with pytest.raises(ValueError, match="max_hops"):
        lineage_from_vertex("gs://b/a", project="p", region="r", max_hops=0, dry_run=True)


def test_lineage_from_vertex_walks_the_metadata_graph_through_the_sdk():
    from google.auth.credentials import AnonymousCredentials

    store = "projects/my-proj/locations/us-central1/metadataStores/default"

    def artifact(i, uri, title, created):
        return {"name": f"{store}/artifacts/{i}", "displayName": title, "uri": uri,
                "schemaTitle": "system.Model" if "adapter" in uri else "system.Dataset",
                "createTime": created, "metadata": {"sha256": f"h{i}"}}

    with FakeVertexAPI() as fake:
        fake.artifacts = [
            artifact(1, "gs://b/dataset", "dataset", "2026-11-01T00:00:00Z"),
            artifact(2, "gs://b/adapter", "adapter", "2026-11-01T01:00:00Z"),  # an older record of the uri
            artifact(3, "gs://b/adapter", "adapter", "2026-11-02T01:00:00Z"),
            artifact(4, "gs://b/unrelated", "unrelated", "2026-11-02T01:00:00Z"),
        ]
        fake.executions = [
            {"name": f"{store}/executions/{n}", "displayName": n, "schemaTitle": "system.ContainerExecution"}
            for n in ("prepare-data", "train-adapter")
        ]
        fake.events = [
            {"artifact": f"{store}/artifacts/{a}", "execution": f"{store}/executions/{x}", "type": t}
            for a, x, t in [(1, "prepare-data", "OUTPUT"), (1, "train-adapter", "INPUT"),
                            (3, "train-adapter", "OUTPUT")]
        ]
        graph = lineage_from_vertex("gs://b/adapter", project="my-proj", region="us-central1",
                                    credentials=AnonymousCredentials(), api_endpoint=fake.endpoint)
    assert sorted(a["uri"] for a in graph["artifacts"]) == ["gs://b/adapter", "gs://b/dataset"]
    assert {a["name"].rsplit("/", 1)[1] for a in graph["artifacts"]} == {"1", "3"}  # the newest adapter record
    assert sorted(e["display_name"] for e in graph["executions"]) == ["prepare-data", "train-adapter"]
    events = {(e["type"], e["artifact"][-1]) for e in graph["events"]}
    assert events == {("OUTPUT", "1"), ("INPUT", "1"), ("OUTPUT", "3")}
    assert graph["artifacts"][0]["metadata"]["sha256"].startswith("h")
