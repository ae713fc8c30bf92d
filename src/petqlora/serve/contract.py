"""Vertex AI's custom serving container contract, as this project fills it: one source of truth for the
server (petqlora.serve) and the registration's container spec (cloud/vertex_models.py).

Vertex starts the container with SERVING_COMMAND + SERVING_ARGS (it expands ``$(AIP_STORAGE_URI)``, the
gs:// folder it copied the model artifact to), sends health checks to AIP_HEALTH_ROUTE and requests to
AIP_PREDICT_ROUTE on AIP_HTTP_PORT. The defaults below are what the registration declares, so the
environment and the spec agree. This module imports nothing: the pipeline image reads it without the
server's dependencies.
"""

SERVING_COMMAND = ("python", "-m", "petqlora.serve")
SERVING_ARGS = ("--adapter", "$(AIP_STORAGE_URI)")
SERVING_PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"

# The environment Vertex sets in the serving container.
ENV_PORT = "AIP_HTTP_PORT"
ENV_HEALTH_ROUTE = "AIP_HEALTH_ROUTE"
ENV_PREDICT_ROUTE = "AIP_PREDICT_ROUTE"
ENV_STORAGE_URI = "AIP_STORAGE_URI"

# The request caps the server applies by default (ServeConfig), which batch prediction's requests must fit:
# at most MAX_INSTANCES images a request, each at most MAX_IMAGE_BYTES. The body cap follows from them.
MAX_INSTANCES = 32
MAX_IMAGE_BYTES = 10_000_000
MAX_REQUEST_BYTES = MAX_INSTANCES * MAX_IMAGE_BYTES * 4 // 3 + 1_000_000  # base64 of each, and the JSON around
