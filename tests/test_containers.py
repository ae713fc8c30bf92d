"""The two images' rules, read off containers/*/Dockerfile, requirements/*.lock, pyproject.toml and
.dockerignore (no Docker needed): base images pinned by tag and digest, the same Python in both, the
hash-checked lock installed in a layer before the source, the lock pinning exactly pyproject.toml's pins,
no secrets, a non-root user, a build context without the checkout's clutter. Each rule is a function that
returns the problems it finds; the tests run it on the real files (no problem) and on crafted bad variants
(the problem is found), so a rule that stops biting fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {name: ROOT / "containers" / name / "Dockerfile" for name in ("trainer", "pipeline")}
IMAGES_LOCK = ROOT / "requirements" / "images.lock"
BUILD_LOCK = ROOT / "requirements" / "build.lock"
BUILD_IN = ROOT / "requirements" / "build.in"
PYPROJECT = ROOT / "pyproject.toml"
DOCKERIGNORE = ROOT / ".dockerignore"
# The extras the images install (the lock is resolved for them); `dev` stays out of the images.
IMAGE_EXTRAS = ("train", "pipeline")
# What the images may COPY from the build context: the lock files, then pyproject.toml and src/.
LOCK_FILES = ("requirements/build.lock", "requirements/images.lock")
SOURCE_PATHS = ("pyproject.toml", "src")
DIGEST = r"sha256:[0-9a-f]{64}"


# ---- a small Dockerfile reader ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order; comments and blank lines dropped, `\\` continuations joined (comment lines
    inside a continuation are dropped, as Docker does)."""
    instructions, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    if pending:
        keyword, _, args = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def copy_sources(instruction: Instruction) -> list[str]:
    """The build-context sources of a COPY/ADD (flags dropped, the destination dropped); [] for --from=."""
    args = instruction.args
    words = json.loads(args) if args.startswith("[") else shlex.split(args)
    if any(word.startswith("--from=") for word in words):
        return []
    words = [word for word in words if not word.startswith("--")]
    return [source.removeprefix("./").rstrip("/") for source in words[:-1]]


def pip_installs(instruction: Instruction) -> list[list[str]]:
    """The argument lists of each `pip install` in a RUN (split at &&, ;, ||)."""
    if instruction.keyword != "RUN":
        return []
    found = []
    for command in re.split(r"&&|\|\||;", instruction.args):
        words = shlex.split(command)
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                found.append(words[i + 2 :])
                break
            if words[i : i + 4] == ["python", "-m", "pip", "install"] or words[i : i + 4] == [
                "python3",
                "-m",
                "pip",
                "install",
            ]:
                found.append(words[i + 4 :])
                break
    return found


def last_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    return instructions[starts[-1] :] if starts else instructions


# ---- the rules ------------------------------------------------------------------------------------------------


def non_root_problems(instructions: list[Instruction]) -> list[str]:
    """The final stage switches to a non-root USER, before any ENTRYPOINT/CMD, and never back to root."""
    problems, user, seen_user = [], "root", False
    for ins in last_stage(instructions):
        if ins.keyword == "USER":
            seen_user = True
            user = ins.args.split(":")[0].strip()
        elif ins.keyword in ("ENTRYPOINT", "CMD") and user in ("root", "0"):
            problems.append(f"{ins.keyword} {ins.args} runs as root: put a non-root USER before it")
    if not seen_user:
        problems.append("no USER instruction: the image runs as root")
    elif user in ("root", "0"):
        problems.append(f"the last USER is {user}: the image runs as root")
    return problems


def base_image_problems(instructions: list[Instruction]) -> list[str]:
    """Every FROM names an exact version tag (never :latest or a bare name) and a digest: a literal
    @sha256:..., or ${X_DIGEST} from an ARG declared before the first FROM, empty or "@sha256:..." (filled by
    `make pin-base-images`)."""
    problems, global_args, stages = [], {}, set()
    first_from = next((i for i, ins in enumerate(instructions) if ins.keyword == "FROM"), None)
    if first_from is None:
        return ["no FROM instruction"]
    for ins in instructions[:first_from]:
        if ins.keyword == "ARG":
            name, _, value = ins.args.partition("=")
            global_args[name.strip()] = value.strip()
    for ins in instructions:
        if ins.keyword != "FROM":
            continue
        words = [word for word in ins.args.split() if not word.startswith("--platform=")]
        ref = words[0]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if ref in stages:
            continue
        digest_arg = re.fullmatch(r"(?P<image>[^$]+)\$\{(?P<arg>[A-Za-z_][A-Za-z0-9_]*DIGEST)\}", ref)
        if digest_arg:
            image = digest_arg["image"]
            arg = digest_arg["arg"]
            if arg not in global_args:
                problems.append(f"FROM {ref}: ARG {arg} is not declared before the first FROM")
            elif global_args[arg] and not re.fullmatch("@" + DIGEST, global_args[arg]):
                problems.append(f"ARG {arg}={global_args[arg]}: a digest is @sha256:<64 hex>, or empty until pinned")
        elif re.fullmatch(r"[^$@]+@" + DIGEST, ref):
            image = ref.split("@")[0]
        else:
            problems.append(f"FROM {ref}: not pinned by digest (write @sha256:... or use an ARG ..._DIGEST)")
            continue
        name, _, tag = image.rpartition(":")
        if not name or "/" in tag:
            problems.append(f"FROM {ref}: no tag: name the exact version")
        elif tag == "latest" or not re.search(r"\d+\.\d+", tag):
            problems.append(f"FROM {ref}: tag {tag!r} is not an exact version")
    return problems


def lock_layer_problems(instructions: list[Instruction]) -> list[str]:
    """Dependencies come from the lock in a layer of their own: the lock files are COPYed (alone) and
    installed with --require-hashes --no-deps before any source is COPYed; the package is then installed
    from the source with --no-deps, non-editable; no other pip install."""
    problems = []
    stage = last_stage(instructions)
    copies = [(i, copy_sources(ins)) for i, ins in enumerate(stage) if ins.keyword in ("COPY", "ADD")]
    lock_copies = [i for i, sources in copies if sources and all(s.endswith(".lock") for s in sources)]
    source_copies = [i for i, sources in copies if any(not s.endswith(".lock") for s in sources)]
    first_source = min(source_copies, default=len(stage))
    lock_install = package_install = None
    for i, ins in enumerate(stage):
        for args in pip_installs(ins):
            requirement_files = [args[j + 1] for j, word in enumerate(args[:-1]) if word in ("-r", "--requirement")]
            if any(f.endswith(".lock") for f in requirement_files):
                missing = [flag for flag in ("--require-hashes", "--no-deps") if flag not in args]
                if missing:
                    problems.append(f"pip install -r {requirement_files[0]}: without {' '.join(missing)}")
                if any(f.endswith("images.lock") for f in requirement_files):
                    lock_install = i
            elif "." in args:
                package_install = i
                if "--no-deps" not in args:
                    problems.append("pip install .: without --no-deps (the lock has installed the dependencies)")
                if "-e" in args or "--editable" in args:
                    problems.append("pip install -e .: the image installs the package, not a link to /app")
            else:
                problems.append(f"pip install {' '.join(args)}: not from the lock")
    if lock_install is None:
        problems.append("no `pip install --require-hashes --no-deps -r .../images.lock`")
    else:
        if not any(i < lock_install for i in lock_copies):
            problems.append("the lock is installed before it is COPYed on its own")
        if lock_install > first_source:
            problems.append("the source is COPYed before the lock is installed: a code change reinstalls torch")
    if package_install is None:
        problems.append("no `pip install --no-deps .` of the package")
    elif lock_install is not None and package_install < lock_install:
        problems.append("the package is installed before the lock")
    return problems


SECRET_WORDS = {"TOKEN", "KEY", "APIKEY", "SECRET", "SECRETS", "PASSWORD", "PASSWD", "CREDENTIALS", "CREDENTIAL"}
SECRET_FILES = re.compile(
    r"(^|/)(\.env|\.netrc|\.npmrc|\.pypirc|\.docker|\.ssh|\.aws|\.config|id_[a-z0-9]+|[^/]*credential[^/]*"
    r"|[^/]*secret[^/]*|[^/]*token[^/]*|[^/]*\.(pem|key|p12|pfx)|[^/]*service[-_]?account[^/]*"
    r"|[^/]*key[^/]*\.json)$",
    re.I,
)


def env_and_arg_names(ins: Instruction) -> list[str]:
    if ins.keyword == "ARG":
        return [ins.args.partition("=")[0].strip()]
    if ins.keyword == "ENV":
        words = shlex.split(ins.args)
        if words and "=" not in words[0]:  # legacy `ENV NAME value`
            return [words[0]]
        return [word.partition("=")[0] for word in words if "=" in word]
    return []


def secret_problems(instructions: list[Instruction]) -> list[str]:
    """No ENV/ARG whose name says token, key, secret, password or credentials (build args and env land in
    the image's history), no COPY/ADD of credential-like files, no ADD of a URL."""
    problems = []
    for ins in instructions:
        for name in env_and_arg_names(ins):
            if SECRET_WORDS & set(name.upper().split("_")):
                problems.append(f"{ins.keyword} {name}: secrets come from Secret Manager at run time, not the image")
        if ins.keyword in ("COPY", "ADD"):
            for source in copy_sources(ins):
                if SECRET_FILES.search(source):
                    problems.append(f"{ins.keyword} {source}: looks like a credential")
                if re.match(r"https?://", source):
                    problems.append(f"ADD {source}: a download without a hash; put it in the lock")
    return problems


def copied_paths_problems(instructions: list[Instruction]) -> list[str]:
    """The image copies only the lock files, pyproject.toml and src/ from the build context."""
    allowed = set(LOCK_FILES) | set(SOURCE_PATHS)
    return [
        f"{ins.keyword} {source}: the images copy only {', '.join(sorted(allowed))}"
        for ins in instructions
        if ins.keyword in ("COPY", "ADD")
        for source in copy_sources(ins)
        if source not in allowed
    ]


def python_minor(instructions: list[Instruction]) -> set[str]:
    """The python3.X versions a Dockerfile installs or runs."""
    return {
        match
        for ins in instructions
        if ins.keyword == "RUN"
        for match in re.findall(r"\bpython(3\.\d+)\b", ins.args)
    }


def lock_python(lock_text: str) -> str | None:
    match = re.search(r"--python-version[ =](3\.\d+)", lock_text)
    return match[1] if match else None


def same_python_problems(dockerfiles: dict[str, list[Instruction]], lock_text: str) -> list[str]:
    """Both images install the same python3.X from the same distribution release (Ubuntu 24.04), the one the
    lock is resolved for."""
    problems, versions = [], {}
    for name, instructions in dockerfiles.items():
        found = python_minor(instructions)
        if len(found) != 1:
            problems.append(f"{name}: expected one python3.X in its RUN lines, found {sorted(found) or 'none'}")
            continue
        versions[name] = found.pop()
        bases = [ins.args for ins in instructions if ins.keyword == "FROM"]
        if not bases or not re.search(r"ubuntu:?24\.04", bases[-1]):
            problems.append(f"{name}: base {bases[-1] if bases else None} is not Ubuntu 24.04 (its python3.12)")
    if len(set(versions.values())) > 1:
        problems.append(f"the images install different Pythons: {versions}")
    locked = lock_python(lock_text)
    if locked is None:
        problems.append("the lock's header does not say its --python-version")
    elif any(version != locked for version in versions.values()):
        problems.append(f"the lock is resolved for Python {locked}, the images install {versions}")
    return problems


# ---- the lock ---------------------------------------------------------------------------------------------------


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock_text: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes), for each `name==version \\ --hash=...` entry."""
    pins, current = {}, None
    for line in lock_text.splitlines():
        entry = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", line)
        if entry:
            current = canonical(entry[1])
            pins[current] = (entry[3], 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line and not line.startswith(" "):
            current = None
    return pins


def project_requirements(pyproject: dict) -> list[str]:
    project = pyproject["project"]
    extras = project.get("optional-dependencies", {})
    return list(project["dependencies"]) + [req for extra in IMAGE_EXTRAS for req in extras.get(extra, [])]


def lock_pin_problems(pyproject: dict, lock_text: str) -> list[str]:
    """Every dependency of pyproject.toml (base + the images' extras) is an exact pin, and the lock pins it
    at that version; every lock entry carries hashes; the lock was made for those extras."""
    problems, pins = [], lock_pins(lock_text)
    if not pins:
        return ["the lock pins nothing"]
    for requirement in project_requirements(pyproject):
        spec = requirement.split(";")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s,]+)", spec)
        if not match:
            problems.append(f"pyproject.toml: {requirement!r} is not an exact pin (name==version)")
            continue
        name, version = canonical(match[1]), match[3]
        if name not in pins:
            problems.append(f"{name}=={version} is not in the lock: run `make lock`")
        elif pins[name][0] != version:
            problems.append(f"{name}: pyproject.toml pins {version}, the lock {pins[name][0]}: run `make lock`")
    problems += [f"{name}=={version}: no --hash in the lock" for name, (version, hashes) in pins.items() if not hashes]
    for extra in IMAGE_EXTRAS:
        if f"--extra {extra}" not in lock_text:
            problems.append(f"the lock's command has no --extra {extra}")
    return problems


def cuda_torch_problems(lock_text: str) -> list[str]:
    """torch is PyPI's default linux x86_64 build: the CUDA one (no +cpu local version), with the CUDA
    libraries it depends on there."""
    pins = lock_pins(lock_text)
    problems = []
    if "torch" not in pins:
        return ["torch is not in the lock"]
    if "+" in pins["torch"][0]:
        problems.append(f"torch=={pins['torch'][0]}: a local build, not PyPI's default (CUDA) wheel")
    if not any(name.startswith("nvidia-cudnn") for name in pins):
        problems.append("no nvidia-cudnn-* in the lock: torch's CUDA libraries are missing (a CPU-only resolution?)")
    return problems


def build_lock_problems(pyproject: dict, build_in: str, build_lock: str, images_lock: str) -> list[str]:
    """requirements/build.in says what pyproject.toml's [build-system] requires; build.lock pins it with
    hashes at the version images.lock has."""
    problems = []
    declared = sorted(line.split("#")[0].strip() for line in build_in.splitlines() if line.split("#")[0].strip())
    required = sorted(pyproject["build-system"]["requires"])
    if declared != required:
        problems.append(f"requirements/build.in {declared} != pyproject.toml [build-system] requires {required}")
    build_pins, image_pins = lock_pins(build_lock), lock_pins(images_lock)
    for requirement in required:
        name = canonical(re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0])
        if name not in build_pins or not build_pins[name][1]:
            problems.append(f"{name}: not pinned with hashes in requirements/build.lock")
        elif image_pins.get(name, (None,))[0] != build_pins[name][0]:
            problems.append(f"{name}: build.lock {build_pins[name][0]}, images.lock {image_pins.get(name, (None,))[0]}")
    return problems


# ---- .dockerignore ---------------------------------------------------------------------------------------------


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """(is_exception, regex) per line, in order, with Docker's syntax: *, ?, ** and a leading `!`."""
    patterns = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex, i = "", 0
        while i < len(line):
            if line.startswith("**/", i):
                regex, i = regex + "(.*/)?", i + 3
            elif line.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif line[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif line[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif line[i] == "[":
                end = line.index("]", i)
                regex, i = regex + line[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(line[i]), i + 1
        patterns.append((negate, re.compile(regex)))
    return patterns


def is_excluded(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in patterns:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


KEPT_OUT = (
    ".venv/bin/python",
    "runs/latest/run_summary.json",
    ".git/HEAD",
    ".pytest_cache/v/cache/lastfailed",
    ".hypothesis/examples/x",
    "src/petqlora/__pycache__/params.cpython-312.pyc",
    "src/petqlora.egg-info/PKG-INFO",
    "tests/test_containers.py",
    ".env",
    "service-account-key.json",
)
LET_IN = ("pyproject.toml", "src/petqlora/__init__.py", *LOCK_FILES)


def dockerignore_problems(text: str, dockerfiles: dict[str, list[Instruction]]) -> list[str]:
    """.venv, runs, .git, the test caches and other clutter stay out of the build context; everything the
    Dockerfiles COPY gets in."""
    patterns = dockerignore_patterns(text)
    problems = [f".dockerignore lets {path} into the build context" for path in KEPT_OUT if not is_excluded(path, patterns)]
    needed = set(LET_IN) | {
        source for instructions in dockerfiles.values() for ins in instructions if ins.keyword == "COPY"
        for source in copy_sources(ins)
    }
    problems += [f".dockerignore leaves out {path}, which the images COPY" for path in sorted(needed) if is_excluded(path, patterns)]
    return problems


# ---- the real files ------------------------------------------------------------------------------------------


def read(path: Path) -> str:
    return path.read_text()


def parsed(name: str, text: str | None = None) -> list[Instruction]:
    return parse_dockerfile(read(DOCKERFILES[name]) if text is None else text)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(read(PYPROJECT))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
@pytest.mark.parametrize(
    "rule", [non_root_problems, base_image_problems, lock_layer_problems, secret_problems, copied_paths_problems]
)
def test_dockerfile_follows_rule(name, rule):
    assert rule(parsed(name)) == []


def test_both_images_run_the_python_the_lock_is_for():
    assert same_python_problems({name: parsed(name) for name in DOCKERFILES}, read(IMAGES_LOCK)) == []
    assert lock_python(read(IMAGES_LOCK)) == "3.12"


def test_lock_pins_are_pyprojects_pins(pyproject):
    assert lock_pin_problems(pyproject, read(IMAGES_LOCK)) == []


def test_lock_has_pypis_cuda_torch():
    assert cuda_torch_problems(read(IMAGES_LOCK)) == []


def test_build_backend_is_locked_too(pyproject):
    assert build_lock_problems(pyproject, read(BUILD_IN), read(BUILD_LOCK), read(IMAGES_LOCK)) == []


def test_lock_header_says_how_to_regenerate_it():
    for lock in (IMAGES_LOCK, BUILD_LOCK):
        header = read(lock).splitlines()[:3]
        assert any("make lock" in line and "uv==" in line and "--generate-hashes" in line for line in header), lock


def test_dockerignore_keeps_the_checkout_out():
    assert dockerignore_problems(read(DOCKERIGNORE), {name: parsed(name) for name in DOCKERFILES}) == []


# ---- each rule bites: crafted bad Dockerfiles, locks and ignore files ----------------------------------------


def mutate(text: str, old: str, new: str) -> str:
    assert old in text, f"the crafted case no longer applies: {old!r} is not in the file"
    return text.replace(old, new, 1)


TRAINER = DOCKERFILES["trainer"]
PIPELINE = DOCKERFILES["pipeline"]
BAD_DOCKERFILES = {
    # non-root user
    "no USER": (TRAINER, non_root_problems, "USER petqlora\n", ""),
    "USER root": (PIPELINE, non_root_problems, "USER petqlora\n", "USER root\n"),
    "root again before ENTRYPOINT": (TRAINER, non_root_problems, "ENTRYPOINT", "USER 0\nENTRYPOINT"),
    # pinned base image
    ":latest": (TRAINER, base_image_problems, "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04$", "nvidia/cuda:latest$"),
    "no tag": (PIPELINE, base_image_problems, "FROM ubuntu:24.04${BASE_DIGEST}", "FROM ubuntu${BASE_DIGEST}"),
    "floating tag": (PIPELINE, base_image_problems, "FROM ubuntu:24.04${BASE_DIGEST}", "FROM ubuntu:noble${BASE_DIGEST}"),
    "no digest": (PIPELINE, base_image_problems, "FROM ubuntu:24.04${BASE_DIGEST}", "FROM ubuntu:24.04"),
    "digest ARG not declared": (TRAINER, base_image_problems, "ARG BASE_DIGEST=\n", ""),
    "malformed digest": (PIPELINE, base_image_problems, "ARG BASE_DIGEST=\n", "ARG BASE_DIGEST=@sha256:1234\n"),
    "image from an ARG": (PIPELINE, base_image_problems, "FROM ubuntu:24.04${BASE_DIGEST}", "FROM ${BASE_DIGEST}"),
    # the lock layer
    "source before the lock": (TRAINER, lock_layer_problems, "COPY requirements/", "COPY src ./src\nCOPY requirements/"),
    "no --require-hashes": (
        PIPELINE,
        lock_layer_problems,
        "--require-hashes --no-deps --no-build-isolation",
        "--no-deps --no-build-isolation",
    ),
    "resolving deps": (TRAINER, lock_layer_problems, "--require-hashes --no-deps --no-build-isolation", "--require-hashes --no-build-isolation"),
    "no lock install": (PIPELINE, lock_layer_problems, "-r /tmp/requirements/images.lock", "-r /tmp/requirements/build.lock"),
    "lock not copied first": (TRAINER, lock_layer_problems, "COPY requirements/build.lock requirements/images.lock /tmp/requirements/\n", ""),
    "editable install": (PIPELINE, lock_layer_problems, "--no-index .", "--no-index -e ."),
    "package resolves deps": (TRAINER, lock_layer_problems, "pip install --no-deps --no-build-isolation --no-index .", "pip install --no-build-isolation ."),
    "pip install outside the lock": (TRAINER, lock_layer_problems, "    && pip check", "    && pip install torch==2.13.0 && pip check"),
    # secrets
    "ENV token": (TRAINER, secret_problems, "ENV HF_HOME=", "ENV HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz\nENV HF_HOME="),
    "ARG key": (PIPELINE, secret_problems, "ARG BASE_DIGEST=\n", "ARG BASE_DIGEST=\nARG GCP_API_KEY\n"),
    "ENV credentials": (PIPELINE, secret_problems, "WORKDIR /app\n", "WORKDIR /app\nENV GOOGLE_APPLICATION_CREDENTIALS=/app/sa.json\n"),
    "COPY a key file": (TRAINER, secret_problems, "COPY src ./src\n", "COPY src ./src\nCOPY service-account.json /app/\n"),
    "ADD a URL": (PIPELINE, secret_problems, "COPY src ./src\n", "COPY src ./src\nADD https://example.com/x.whl /tmp/\n"),
    # only the lock, pyproject.toml and src are copied
    "COPY the whole context": (PIPELINE, copied_paths_problems, "COPY src ./src\n", "COPY . /app\n"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCKERFILES))
def test_rule_finds_the_crafted_problem(case):
    path, rule, old, new = BAD_DOCKERFILES[case]
    assert rule(parse_dockerfile(read(path))) == []
    assert rule(parse_dockerfile(mutate(read(path), old, new))) != []


@pytest.mark.parametrize(
    "dockerfile, old, new",
    [
        ("trainer", "python3.12 python3.12-venv python3.12-dev", "python3.11 python3.11-venv python3.11-dev"),
        ("pipeline", "python3.12 -m venv", "python3.13 -m venv"),
        ("pipeline", "FROM ubuntu:24.04${BASE_DIGEST}", "FROM ubuntu:22.04${BASE_DIGEST}"),
        ("lock", "--python-version 3.12", "--python-version 3.11"),
        ("lock", "--python-version 3.12", ""),
    ],
)
def test_same_python_rule_bites(dockerfile, old, new):
    texts = {name: read(path) for name, path in DOCKERFILES.items()}
    lock = read(IMAGES_LOCK)
    if dockerfile == "lock":
        lock = mutate(lock, old, new)
    else:
        texts[dockerfile] = mutate(texts[dockerfile], old, new)
    assert same_python_problems({name: parse_dockerfile(text) for name, text in texts.items()}, lock) != []


def test_lock_pin_rule_bites(pyproject):
    lock = read(IMAGES_LOCK)
    moved = json.loads(json.dumps(pyproject))
    moved["project"]["dependencies"] = [
        "torch==2.12.0" if dep.startswith("torch==") else dep for dep in moved["project"]["dependencies"]
    ]
    assert any("torch" in problem for problem in lock_pin_problems(moved, lock))

    ranged = json.loads(json.dumps(pyproject))
    ranged["project"]["dependencies"].append("einops>=0.8")
    assert any("not an exact pin" in problem for problem in lock_pin_problems(ranged, lock))

    added = json.loads(json.dumps(pyproject))
    added["project"]["optional-dependencies"]["pipeline"].append("einops==0.8.1")
    assert any("einops" in problem and "make lock" in problem for problem in lock_pin_problems(added, lock))

    unhashed = re.sub(r"(?m)^(peft==\S+) \\\n(\s+--hash=\S+( \\)?\n)+", r"\1\n", lock)
    assert unhashed != lock
    assert any(problem.startswith("peft==") for problem in lock_pin_problems(pyproject, unhashed))

    assert any("--extra pipeline" in problem for problem in lock_pin_problems(pyproject, mutate(lock, "--extra pipeline", "")))


def test_cuda_torch_rule_bites():
    lock = read(IMAGES_LOCK)
    assert cuda_torch_problems(mutate(lock, "\ntorch==2.13.0 ", "\ntorch==2.13.0+cpu ")) != []
    assert cuda_torch_problems(re.sub(r"(?m)^nvidia-cudnn", "not-cudnn", lock)) != []


def test_build_lock_rule_bites(pyproject):
    build_in, build_lock, images_lock = read(BUILD_IN), read(BUILD_LOCK), read(IMAGES_LOCK)
    assert build_lock_problems(pyproject, mutate(build_in, "setuptools>=69", "setuptools>=70"), build_lock, images_lock) != []
    other = re.sub(r"(?m)^setuptools==\S+", "setuptools==1.0", build_lock)
    assert build_lock_problems(pyproject, build_in, other, images_lock) != []


@pytest.mark.parametrize(
    "old, new",
    [
        ("*\n", "\n"),  # no allow-list: tests/, .env, key files get in
        ("!requirements/*.lock\n", ""),  # the lock files are left out, the build fails
        ("!src\n", ""),
        ("**/__pycache__\n**/*.py[cod]\n", ""),
    ],
)
def test_dockerignore_rule_bites(old, new):
    dockerfiles = {name: parsed(name) for name in DOCKERFILES}
    assert dockerignore_problems(mutate(read(DOCKERIGNORE), old, new), dockerfiles) != []


def test_dockerignore_rule_bites_without_the_named_entries():
    bare = "\n".join(line for line in read(DOCKERIGNORE).splitlines() if line not in ("*", ".venv", "runs", ".git"))
    problems = dockerignore_problems(bare, {name: parsed(name) for name in DOCKERFILES})
    assert any(".venv" in p for p in problems) and any("runs/" in p for p in problems) and any(".git/" in p for p in problems)


# ---- tools/pin_base_images.py (make pin-base-images) without Docker -------------------------------------------


def pin_tool():
    spec = importlib.util.spec_from_file_location("pin_base_images", ROOT / "tools" / "pin_base_images.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_pin_writes_each_resolved_digest_into_its_arg():
    tool = pin_tool()
    digests = {"nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04": "sha256:" + "a" * 64, "ubuntu:24.04": "sha256:" + "b" * 64}
    for name, path in DOCKERFILES.items():
        text = read(path)
        [before] = tool.base_images(text)
        assert before.digest == "" or re.fullmatch(DIGEST, before.digest)
        pinned = tool.pin(text, digests.__getitem__)
        [after] = tool.base_images(pinned)
        assert after.digest == digests[after.ref]
        assert f"ARG BASE_DIGEST=@{digests[after.ref]}" in pinned
        assert base_image_problems(parse_dockerfile(pinned)) == []  # a pinned file still passes the rule
        only_the_arg = re.compile(r"(?m)^ARG BASE_DIGEST=.*$")
        assert only_the_arg.sub("ARG BASE_DIGEST=", pinned) == only_the_arg.sub("ARG BASE_DIGEST=", text)


def test_pin_refuses_what_is_not_a_digest():
    tool = pin_tool()
    with pytest.raises(ValueError, match="not sha256"):
        tool.pin(read(PIPELINE), lambda ref: "latest")
    with pytest.raises(ValueError, match="nothing to pin"):
        tool.pin("FROM ubuntu:24.04\n", lambda ref: "sha256:" + "c" * 64)
    with pytest.raises(ValueError, match="no `ARG"):
        tool.base_images("FROM ubuntu:24.04${BASE_DIGEST}\n")
