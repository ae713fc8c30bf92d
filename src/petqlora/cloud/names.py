"""Naming rules shared by the Cloud Run launcher, the backends, the Vertex commands and the local registry."""

import re

from petqlora.problems import Problems

# Project IDs: 6-30 chars, lowercase letters, digits and hyphens, starting with a letter (domain-scoped
# projects carry a "domain:" prefix).
PROJECT_RE = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Vertex version aliases: "[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]", never all digits (those are version ids).
ALIAS_RE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
# Regions as Cloud Run and Vertex name them ("us-central1"), service account emails, bucket names.
REGION_RE = re.compile(r"^[a-z]+(?:-[a-z]+)+[0-9]+$")
SERVICE_ACCOUNT_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*@[a-z0-9.-]+\.gserviceaccount\.com$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")
# What `python -m` runs: a dotted Python module path.
MODULE_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def check_entrypoint_module(p: Problems, module: object) -> bool:
    """Adds a problem to ``p`` unless ``module`` is a dotted Python module path (what ``python -m`` runs)."""
    return p.check(isinstance(module, str) and bool(MODULE_RE.match(module)), "module", module,
                   "must be a dotted Python module path", "e.g. 'petqlora.train.train_adapter'")
