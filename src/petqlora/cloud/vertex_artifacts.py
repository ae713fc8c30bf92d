"""The KFP artifact types Vertex AI Pipelines links to the Model Registry and to endpoints: ``google.VertexModel``
and ``google.VertexEndpoint`` (deploy_model's output, the endpoint the version serves on).

google-cloud-pipeline-components defines it, but it needs aiplatform < 2 and cannot be installed beside
this project's SDK; a ``dsl.Artifact`` subclass with the same schema title and metadata is what the Vertex
UI reads (REFERENCE.md). register_model's output is one: on Vertex its ``resourceName`` is the registered
model version and its URI the version's REST URL, so the run's graph links to the version's page; with the
local SQLite registry the same class carries the local ref (NAME@VERSION) and keeps KFP's local URI.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kfp import dsl

__all__ = ["VertexEndpoint", "VertexModel", "record_registration", "vertex_model_uri"]

_VERSION_NAME_RE = re.compile(r"^projects/[^/]+/locations/(?P<region>[^/]+)/models/[^/@]+(@[^/]+)?$")


class VertexModel(dsl.Artifact):
    """A model in Vertex AI Model Registry; metadata["resourceName"] names it (with "@version" when one)."""

    schema_title = "google.VertexModel"
    schema_version = "0.0.1"


class VertexEndpoint(dsl.Artifact):
    """An endpoint in Vertex AI; metadata["resourceName"] names it, the URI is its REST URL (as GCPC's)."""

    schema_title = "google.VertexEndpoint"
    schema_version = "0.0.1"


def vertex_model_uri(resource_name: str) -> str:
    """The URI Vertex gives a google.VertexModel: the REST URL of the model (version) in its region.

    Raises ValueError unless `resource_name` is projects/P/locations/R/models/ID[@VERSION].
    """
    match = _VERSION_NAME_RE.match(resource_name) if isinstance(resource_name, str) else None
    if match is None:
        raise ValueError(f"resource_name={resource_name!r}: not a Vertex model resource name; fix: pass "
                         "projects/<p>/locations/<r>/models/<id>[@<version>]")
    return f"https://{match['region']}-aiplatform.googleapis.com/v1/{resource_name}"


def record_registration(artifact: Any, ref: str, metadata: dict, record: dict) -> None:
    """Fill register_model's output artifact for the version `ref` registered, with `metadata` beside
    "resourceName" = `ref`.

    Vertex (`ref` is projects/.../models/ID@VERSION): the URI becomes the version's REST URL, which is how
    the Vertex UI links the artifact to the Model Registry (no file lies behind it; Vertex ML Metadata holds
    the lineage). Local registry (`ref` is NAME@VERSION): KFP's local URI is kept and `record` is written
    there as JSON.
    """
    artifact.metadata.update({**metadata, "resourceName": ref})
    if ref.startswith("projects/"):
        artifact.uri = vertex_model_uri(ref)
        return
    with open(artifact.path, "w") as f:
        json.dump(record, f, indent=1)
