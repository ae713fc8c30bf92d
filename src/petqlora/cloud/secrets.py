"""Secrets passed by reference: the entrypoint reads the Hugging Face token from Secret Manager at start.

A Cloud Run Job takes a secret as an env var by reference (the platform resolves it); a Vertex AI CustomJob's
container takes plain values only. So the CustomJob gets ``HF_TOKEN_SECRET=projects/P/secrets/S/versions/V``
(the version's name, never the token), and :func:`export_secret_env`, called by every entrypoint before its
step, reads that version with the job's own credentials (its service account needs
``roles/secretmanager.secretAccessor`` on the secret) and sets ``HF_TOKEN`` in this process only. It speaks
Secret Manager's REST API through google-auth, which the trainer image has (with google-cloud-storage): no
client library more. The token is never logged.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import MutableMapping
from typing import Any

__all__ = ["SECRET_ENV", "TOKEN_ENV", "SecretAccessError", "export_secret_env"]

SECRET_ENV = "HF_TOKEN_SECRET"
TOKEN_ENV = "HF_TOKEN"
ENDPOINT = "https://secretmanager.googleapis.com"
_VERSION_RE = re.compile(r"^projects/[^/]+/secrets/[A-Za-z0-9_-]+/versions/[A-Za-z0-9_-]+$")


class SecretAccessError(RuntimeError):
    """The secret named by HF_TOKEN_SECRET could not be read."""


def export_secret_env(environ: MutableMapping[str, str] | None = None, *, session: Any = None,
                      endpoint: str = ENDPOINT) -> bool:
    """Set ``HF_TOKEN`` from the Secret Manager version named by ``HF_TOKEN_SECRET``; True when it did.
    Nothing happens without ``HF_TOKEN_SECRET``, or when ``HF_TOKEN`` is set already (a Cloud Run Job, a
    local run). ``session``: an authorized ``requests`` session (default: application default credentials)."""
    environ = os.environ if environ is None else environ
    name = environ.get(SECRET_ENV, "")
    if not name or environ.get(TOKEN_ENV):
        return False
    if not _VERSION_RE.match(name):
        raise SecretAccessError(f"{SECRET_ENV}={name!r}: is not a secret version name; fix: "
                                "projects/PROJECT/secrets/NAME/versions/VERSION (the backend sets it)")
    if session is None:
        import google.auth
        from google.auth.transport.requests import AuthorizedSession

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        session = AuthorizedSession(credentials)
    response = session.get(f"{endpoint}/v1/{name}:access", timeout=60)
    if response.status_code != 200:
        raise SecretAccessError(
            f"reading secret {name} answered HTTP {response.status_code}: {response.text[:300]}; fix: grant the "
            "job's service account roles/secretmanager.secretAccessor on the secret, or check its name")
    environ[TOKEN_ENV] = base64.b64decode(response.json()["payload"]["data"]).decode().strip()
    return True
