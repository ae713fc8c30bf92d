"""What the parts of the Vertex AI REST fake share: Google's JSON error, timestamps, the filter subset."""

from __future__ import annotations

import re
from datetime import datetime, timezone

LOCATION = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
TYPE_PREFIX = "type.googleapis.com/google.cloud.aiplatform.v1."


class ApiError(Exception):
    """An error answered in Google's JSON error shape, which api_core maps to its exception classes."""

    def __init__(self, code: int, status: str, message: str):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def match_filter(resource: dict, expression: str) -> bool:
    """The subset of AIP-160 filters petqlora sends: `field="value"` clauses joined by AND."""
    if not expression:
        return True
    for clause in re.split(r"\s+AND\s+", expression.strip()):
        m = re.match(r'^\s*([A-Za-z_][\w.]*)\s*=\s*"?([^"]*)"?\s*$', clause)
        if not m:
            raise ApiError(400, "INVALID_ARGUMENT", f"fake: unsupported filter clause {clause!r}")
        field, value = m.groups()
        if field.startswith("labels."):
            actual = resource.get("labels", {}).get(field.split(".", 1)[1])
        elif field in ("display_name", "displayName", "uri", "schema_title", "schemaTitle"):
            actual = resource.get(re.sub(r"_([a-z])", lambda c: c.group(1).upper(), field), "")
        else:
            raise ApiError(400, "INVALID_ARGUMENT", f"fake: unsupported filter field {field!r}")
        if actual != value:
            return False
    return True
