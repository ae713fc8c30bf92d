"""Container image URIs, in one place. Both images install this package at this version (never :latest).

Build and push them as README.md says, then change REGISTRY to your Artifact Registry repository.
"""

from petqlora import __version__

REGISTRY = "us-central1-docker.pkg.dev/my-project/petqlora"
PIPELINE_IMAGE = f"{REGISTRY}/pipeline:{__version__}"
TRAINER_IMAGE = f"{REGISTRY}/trainer:{__version__}"
