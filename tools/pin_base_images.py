"""Pin the images' base images by digest: `make pin-base-images` (Docker with buildx, and the registries).

Each containers/*/Dockerfile names its base image by exact tag and takes the digest from an ARG declared
before FROM:

    ARG BASE_DIGEST=
    FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04${BASE_DIGEST}

`python tools/pin_base_images.py` resolves each tag with `docker buildx imagetools inspect` (the digest of
the tag's manifest list, so `--platform linux/amd64` still picks the amd64 image) and writes
`ARG BASE_DIGEST=@sha256:<64 hex>` into the Dockerfile; commit the change. Run it again to move to the
tag's current image (security fixes), and rebuild.

`python tools/pin_base_images.py --check` changes nothing; it lists the Dockerfiles whose digest is still
empty and exits 1 if there is one (`make images` runs it first, so nothing unpinned is published).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ARG = re.compile(r"^ARG[ \t]+(?P<name>[A-Za-z_][A-Za-z0-9_]*DIGEST)[ \t]*=[ \t]*(?P<value>\S*)[ \t]*$", re.M)
_FROM = re.compile(
    r"^FROM[ \t]+(?:--platform=\S+[ \t]+)?(?P<ref>[^\s$@]+)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*DIGEST)\}", re.M
)


@dataclass(frozen=True)
class BaseImage:
    ref: str  # image:tag, as in the FROM line
    arg: str  # the ARG that holds "@sha256:..." or ""
    digest: str  # "sha256:..." or "" while unpinned


def base_images(dockerfile_text: str) -> list[BaseImage]:
    """The FROM lines that take their digest from an ARG, with the ARG's current value."""
    args = {m["name"]: m["value"] for m in _ARG.finditer(dockerfile_text)}
    found = []
    for m in _FROM.finditer(dockerfile_text):
        if m["name"] not in args:
            raise ValueError(f"FROM {m['ref']}${{{m['name']}}}: no `ARG {m['name']}=` before it")
        value = args[m["name"]]
        if value and not re.fullmatch("@" + DIGEST.pattern, value):
            raise ValueError(f"ARG {m['name']}={value}: expected empty or @sha256:<64 hex>")
        found.append(BaseImage(ref=m["ref"], arg=m["name"], digest=value.removeprefix("@")))
    return found


def pin(dockerfile_text: str, resolve: Callable[[str], str]) -> str:
    """The Dockerfile with each base image's ARG set to "@" + resolve(ref); resolve must answer sha256:<hex>."""
    images = base_images(dockerfile_text)
    if not images:
        raise ValueError("no `FROM image:tag${..._DIGEST}` line: nothing to pin")
    for image in images:
        digest = resolve(image.ref)
        if not DIGEST.fullmatch(digest):
            raise ValueError(f"{image.ref}: resolved to {digest!r}, not sha256:<64 hex>")
        line = re.compile(rf"^ARG[ \t]+{image.arg}[ \t]*=.*$", re.M)
        dockerfile_text = line.sub(f"ARG {image.arg}=@{digest}", dockerfile_text, count=1)
    return dockerfile_text


def resolve_with_docker(ref: str) -> str:
    """The digest of `ref` in its registry, from `docker buildx imagetools inspect`."""
    out = subprocess.run(
        ["docker", "buildx", "imagetools", "inspect", ref, "--format", "{{json .Manifest}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)["digest"]


def dockerfiles() -> list[Path]:
    return sorted((ROOT / "containers").glob("*/Dockerfile"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report unpinned base images (exit 1 if any)")
    args = parser.parse_args(argv)

    if args.check:
        unpinned = [
            f"{path.relative_to(ROOT)}: {image.ref} (ARG {image.arg} is empty)"
            for path in dockerfiles()
            for image in base_images(path.read_text())
            if not image.digest
        ]
        if unpinned:
            print("Base images not pinned by digest; run `make pin-base-images` and commit the Dockerfiles:")
            print("\n".join(f"  {line}" for line in unpinned))
            return 1
        print("Base images pinned by digest.")
        return 0

    needs = (
        "It needs Docker with the buildx plugin and access to the base images' registry (Docker Hub:"
        " nvidia/cuda, ubuntu); run it where the images are built."
    )
    if shutil.which("docker") is None:
        print(f"pin-base-images: docker not found. {needs}")
        return 2
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
        print(f"pin-base-images: `docker buildx` is not available. {needs}")
        return 2
    for path in dockerfiles():
        before = path.read_text()
        try:
            after = pin(before, resolve_with_docker)
        except subprocess.CalledProcessError as error:
            print(f"pin-base-images: {' '.join(error.cmd)} failed:\n{error.stderr}{needs}")
            return 2
        for old, new in zip(base_images(before), base_images(after)):
            print(f"{path.relative_to(ROOT)}: {new.ref}@{new.digest}" + ("" if old.digest else " (was unpinned)"))
        path.write_text(after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
