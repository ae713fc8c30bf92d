"""What every Vertex AI command shares: the scoped SDK session, the advice for a missing login, requests as
JSON for dry runs, the project/region, label, experiment and image checks, and Vertex's label and alias
rules.

Every command has a dry run that builds the real request with the real SDK (offline, with
``AnonymousCredentials``) and prints it as JSON, so a reviewer can see exactly what would be sent
without credentials: ``rest_request`` turns a request message into the HTTP call the client's REST
transport makes (verb, path, query, body), by the client library's own HTTP rule for that RPC. A request
that needs an answer from a live lookup first (an ID found by a list call) is not guessed: the dry run
says so in its place (``needs_lookup``). The SDK is imported inside the functions: importing it takes
seconds, and the trainer image does not install it.

Commands run inside ``vertex_session``, which gives the SDK a fresh configuration for the call and puts
the previous one back afterwards. ``aiplatform.init`` mutates a process-global config that outlives the
call (an ``api_endpoint`` pointed at a local fake, or cached credentials, would leak into the next
command); the scoped swap keeps each call explicit. Not thread-safe: the CLI is single-threaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from typing import Any, Callable, Iterator, Mapping

from petqlora.cloud.names import (
    LABEL_KEY_RE as _LABEL_KEY_RE,
    LABEL_VALUE_RE as _LABEL_VALUE_RE,
    PROJECT_RE as _PROJECT_RE,
)
from petqlora.problems import Problems

__all__ = [
    "AUTH_HELP",
    "Out",
    "VertexAuthError",
    "anonymous_credentials",
    "check_experiment",
    "check_labels",
    "check_pinned_image",
    "check_project_region",
    "needs_lookup",
    "print_json",
    "rest_request",
    "run_alias",
    "to_json_dict",
    "to_vertex_labels",
    "vertex_label_key",
    "vertex_label_value",
    "vertex_session",
]

Out = Callable[[str], Any]

MAX_LABELS = 64

# ML Metadata context IDs, which is what a Vertex AI experiment's name is.
_EXPERIMENT_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")

AUTH_HELP = (
    "no Google Cloud credentials were found. Authenticate with one of:\n"
    "  - `gcloud auth application-default login` (your user account, for interactive use), or\n"
    "  - GOOGLE_APPLICATION_CREDENTIALS=/path/to/service-account-key.json (a service account key file), or\n"
    "  - workload identity / the attached service account when running on Google Cloud.\n"
    "Or use a dry run, which prints the request without credentials."
)


class VertexAuthError(RuntimeError):
    """Raised when a command that talks to Vertex AI finds no credentials."""


# ---------------------------------------------------------------------------------------------------
# SDK plumbing.


@contextlib.contextmanager
def vertex_session(
    project: str, region: str, credentials: Any = None, api_endpoint: str | None = None
) -> Iterator[None]:
    """A fresh SDK config for one command (see the module docstring); turns a missing login into advice."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.aiplatform import initializer

    saved = initializer.global_config
    config = initializer._Config()
    config.init(
        project=project,
        location=region,
        credentials=credentials,
        api_endpoint=api_endpoint,
        # a custom endpoint is a REST one (a local fake, a private endpoint); gRPC stays the SDK default
        api_transport="rest" if api_endpoint else None,
    )
    initializer.global_config = config
    try:
        yield
    except DefaultCredentialsError as err:
        raise VertexAuthError(AUTH_HELP) from err
    finally:
        initializer.global_config = saved


def to_json_dict(message: Any) -> dict:
    """A proto-plus message as the JSON Vertex receives, with snake_case field names."""
    from google.protobuf import json_format

    return json_format.MessageToDict(type(message).pb(message), preserving_proto_field_name=True)


def print_json(out: Out, payload: dict) -> None:
    out(json.dumps(payload, indent=2, sort_keys=True))


def rest_request(service: str, rpc: str, request: Any, *, with_body: bool = True) -> dict:
    """The HTTP call the aiplatform_v1 REST client makes for `request` (a proto-plus request message):
    {"method": rpc, "http": "VERB /v1/<path>", "query": {...}, "body": {...}} (body when the rule has one
    and `with_body`). Built by the library's own HTTP rule for the RPC and api_core's transcoding, so it
    is what the client sends, not a hand-written copy of it.
    """
    import importlib

    from google.api_core import rest_helpers

    # The HTTP rule of an RPC lives only in the generated REST transport's base class: read it there.
    module = importlib.import_module(f"google.cloud.aiplatform_v1.services.{service}.transports.rest_base")
    transport = getattr(module, "_Base" + "".join(w.capitalize() for w in service.split("_")) + "RestTransport")
    rule = getattr(transport, f"_Base{rpc}")
    transcoded, body, query = rest_helpers.transcode_request(
        rule._get_http_options(), type(request).pb(request),
        required_fields_default_values=getattr(rule, f"_Base{rpc}__REQUIRED_FIELDS_DEFAULT_VALUES", None),
        rest_numeric_enums=True,  # what the aiplatform REST transports send
    )
    payload = {"method": rpc, "http": f"{transcoded['method'].upper()} {transcoded['uri']}", "query": query}
    if body is not None and with_body:
        payload["body"] = json.loads(body)
    return payload


def needs_lookup(rpc: str, what: str) -> dict:
    """The place of a request a dry run cannot build: `what` it needs comes from a live lookup."""
    return {"method": rpc, "needs_lookup": f"{what}; a dry run makes no live lookup, so this request is not built"}


def anonymous_credentials() -> Any:
    """Credentials for a dry run: the SDK builds the request without looking for a login."""
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials()


# ---------------------------------------------------------------------------------------------------
# Checks every command makes (they add to a Problems, which raises once).


def _supported_regions() -> frozenset[str]:
    from google.cloud.aiplatform import constants

    return frozenset(constants.base.SUPPORTED_REGIONS) | frozenset(constants.base.MREP_JURISDICTIONS)


def check_project_region(p: Problems, project: Any, region: Any) -> None:
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        p.add(
            "project", project,
            "must be a Google Cloud project ID (6-30 chars: lowercase letters, digits, hyphens; starts "
            "with a letter)",
            "pass the ID shown by `gcloud config get-value project`, not the project name or number",
        )
    if not isinstance(region, str) or region.lower() not in _supported_regions():
        p.add("region", region, "must be a Vertex AI region",
              "pass a region such as 'us-central1' or 'europe-west4'")


def check_experiment(p: Problems, experiment: Any) -> None:
    """A Vertex AI experiment name (an ML Metadata context ID): 1-128 of [a-z0-9-], not starting with '-'."""
    if experiment is not None and (not isinstance(experiment, str) or not _EXPERIMENT_RE.match(experiment)):
        p.add("experiment", experiment, "must be 1-128 lowercase letters, digits or '-', not starting with '-'",
              "pass e.g. 'petqlora-pets'")


def check_pinned_image(p: Problems, name: str, image: Any) -> None:
    """A container image pinned by a version tag or a digest (params.image_pin_problem's rule)."""
    from petqlora.params import image_pin_problem

    problem = image_pin_problem(image) if isinstance(image, str) else "must be an image reference string"
    if problem:
        p.add(name, image, problem, "pass e.g. us-docker.pkg.dev/p/r/trainer:0.1.0 or ...@sha256:<digest>")


def check_labels(p: Problems, name: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        p.add(name, labels, "must be a dict of str to str", "pass e.g. {'team': 'pets'}")
        return
    if len(labels) > MAX_LABELS:
        p.add(name, f"<{len(labels)} labels>", f"Vertex allows at most {MAX_LABELS} labels",
              "drop some labels")
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_KEY_RE.match(k):
            p.add(
                f"{name} key", k,
                "label keys must be 1-63 chars of lowercase letters, digits, '_' or '-', "
                "starting with a letter",
                "use petqlora.cloud.vertex_common.to_vertex_labels() to sanitise them",
            )
        if not isinstance(v, str) or not _LABEL_VALUE_RE.match(v):
            p.add(
                f"{name}[{k!r}]", v,
                "label values must be at most 63 chars of lowercase letters, digits, '_' or '-'",
                "use petqlora.cloud.vertex_common.to_vertex_labels() to sanitise them",
            )


# ---------------------------------------------------------------------------------------------------
# Labels and aliases.


def vertex_label_key(key: str) -> str:
    """A Vertex label key from any string: lowercase, [a-z0-9_-], starts with a letter, at most 63 chars."""
    text = re.sub(r"[^a-z0-9_-]", "_", str(key).strip().lower())
    if not text:
        raise ValueError(f"label key {key!r}: empty after sanitising; fix: use a key with letters or digits")
    if not text[0].isalpha():
        text = "m_" + text  # keys must start with a letter; "m_" keeps e.g. "f1" and "1f" apart
    return text[:63]


def vertex_label_value(value: Any) -> str:
    """A Vertex label value: metrics become e.g. 0.8734 -> "0_8734"; other text is lowercased and sanitised."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            text = str(value).lower()  # "nan", "inf", "-inf"
        else:
            text = format(value, ".6g")  # 6 significant digits: short, and stable across runs
    else:
        text = str(value)
    return re.sub(r"[^a-z0-9_-]", "_", text.strip().lower())[:63]


def to_vertex_labels(labels: Mapping[str, Any]) -> dict[str, str]:
    """Sanitise a mapping (strings, metric values) into labels Vertex accepts; reject keys that collide."""
    out: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key, value in labels.items():
        k = vertex_label_key(key)
        if k in out:
            raise ValueError(
                f"labels: keys {origin[k]!r} and {key!r} both become {k!r} under Vertex label rules; "
                "fix: rename one of them"
            )
        out[k] = vertex_label_value(value)
        origin[k] = key
    if len(out) > MAX_LABELS:
        raise ValueError(f"labels: {len(out)} labels, Vertex allows at most {MAX_LABELS}; fix: drop some")
    return out


def run_alias(run_id: str) -> str:
    """The version alias that names the run which registered a version, e.g. "run-petqlora-20261128"."""
    slug = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", str(run_id).lower())).strip("-")
    return ("run-" + slug)[:128].rstrip("-")
