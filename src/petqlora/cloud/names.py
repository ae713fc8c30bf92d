"""Google Cloud naming rules shared by the Cloud Run launcher, the Vertex commands and the local registry."""

import re

# Project IDs: 6-30 chars, lowercase letters, digits and hyphens, starting with a letter (domain-scoped
# projects carry a "domain:" prefix).
PROJECT_RE = re.compile(r"^(?:[a-z0-9.-]+:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Vertex version aliases: "[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]", never all digits (those are version ids).
ALIAS_RE = re.compile(r"^[a-z][a-zA-Z0-9-]{0,126}[a-z0-9]$")
