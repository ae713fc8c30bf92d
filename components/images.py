"""Container image URIs, in one place: the pipeline image (every component's base image) and the trainer
image (the Cloud Run Job's), both tagged with the package version (never :latest).

The registry is the user's, given when the pipeline is compiled (`python pipeline.py compile|submit|schedule
--image-registry REGION-docker.pkg.dev/PROJECT/REPO`, or PETQLORA_IMAGE_REGISTRY, read by the CLI only).
KFP fixes a component's base_image when it is decorated, at import, before any flag is read; so the
components are decorated with PLACEHOLDER_REGISTRY and `set_registry` rewrites each executor's image in
the compiled IR. Rewriting the IR (rather than building the components in a factory at compile time) keeps
the components plain module-level functions, which kfp.local needs (it reads their source), and checks
every executor in one pass. The trainer image reaches the Cloud Run Job through the `backend` parameter,
which submit and schedule fill from the same registry when it names none.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from petqlora import __version__
from petqlora.params import image_pin_problem
from petqlora.problems import Problems

PLACEHOLDER_REGISTRY = "us-central1-docker.pkg.dev/my-project/petqlora"
IMAGE_NAMES = ("pipeline", "trainer")
REGISTRY_ENV = "PETQLORA_IMAGE_REGISTRY"
# HOST[:PORT]/PATH: an Artifact Registry repository (REGION-docker.pkg.dev/PROJECT/REPO) or any registry path.
_REGISTRY_RE = re.compile(r"^[a-z0-9]+(?:[.-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+$")


def image(name: str, registry: str = PLACEHOLDER_REGISTRY) -> str:
    """`registry/name:<package version>`."""
    return f"{registry}/{name}:{__version__}"


PIPELINE_IMAGE = image("pipeline")
TRAINER_IMAGE = image("trainer")


def check_registry(registry: Any, problems: Problems, option: str = "--image-registry") -> None:
    """A registry path the images can be pushed to and pulled from: no scheme, no tag, not the placeholder."""
    fix = (f"pass {option} REGION-docker.pkg.dev/PROJECT/REPO (where pipeline:{__version__} and "
           f"trainer:{__version__} were pushed: docs/cloud_setup.md section 6), or set {REGISTRY_ENV}")
    if not isinstance(registry, str) or not registry:
        problems.add(option, registry, f"is not given, so the images name the placeholder {PLACEHOLDER_REGISTRY}", fix)
    elif registry.rstrip("/") == PLACEHOLDER_REGISTRY:
        problems.add(option, registry, "is the placeholder registry of the source, not yours", fix)
    elif not _REGISTRY_RE.match(registry.rstrip("/")):
        problems.add(option, registry, "must be HOST/PATH without a scheme or a tag (the images are tagged "
                     f":{__version__} for you)", fix)


def set_registry(ir: dict, registry: str) -> dict:
    """The compiled pipeline `ir` with every executor's image (each PLACEHOLDER_REGISTRY/NAME:TAG) moved to
    `registry`. Raises ValueError for a bad registry or an executor image that is not one of ours."""
    p = Problems("images")
    check_registry(registry, p)
    p.raise_if_any()
    registry = registry.rstrip("/")
    for name, executor in ir["deploymentSpec"]["executors"].items():
        container = executor.get("container", {})
        current = container.get("image", "")
        if not current.startswith(PLACEHOLDER_REGISTRY + "/"):
            raise ValueError(f"executor {name}: image {current!r} is not under {PLACEHOLDER_REGISTRY}; "
                             "build components with components.images.PIPELINE_IMAGE")
        container["image"] = registry + current[len(PLACEHOLDER_REGISTRY):]
    return ir


def image_problems(ir: dict, problems: Problems) -> None:
    """Adds a problem when executor images name the placeholder registry (one, naming the flag), and one for
    each image that is not pinned by a version tag or a digest."""
    executors = ir.get("deploymentSpec", {}).get("executors", {})
    found = {name: e.get("container", {}).get("image", "") for name, e in executors.items()}
    placeholder = sorted(name for name, current in found.items() if current.startswith(PLACEHOLDER_REGISTRY + "/"))
    if placeholder:
        check_registry(None, problems)
    for name, current in sorted(found.items()):
        if name not in placeholder and image_pin_problem(current):
            problems.add(f"{name} image", current, image_pin_problem(current), "recompile with --image-registry")


def set_registry_in_file(src: str | Path, dst: str | Path, registry: str) -> None:
    """`set_registry` on a compiled YAML file, written to `dst`; KFP's header comment is kept."""
    import yaml

    text = Path(src).read_text()
    header = "".join(line for line in text.splitlines(keepends=True)[:200] if line.startswith("#"))
    docs = list(yaml.safe_load_all(text))
    set_registry(docs[0], registry)
    Path(dst).write_text(header + yaml.safe_dump_all(docs, sort_keys=False))


def refuse_unusable_images(template: str | Path) -> None:
    """Before a real run is created: a local compiled YAML's images must be the user's and pinned (one
    ValueError listing each problem); a remote template's images are Vertex's to resolve."""
    import yaml

    p = Problems("images of the compiled pipeline (nothing was sent)")
    if Path(template).is_file():
        image_problems(next(yaml.safe_load_all(Path(template).read_text())), p)
    p.raise_if_any()
