"""Mutation check: plant known, plausible bugs one at a time and check that the tests catch each one.

    make mutation                                              # every mutation (several minutes)
    .venv/bin/python tools/mutation_check.py --only masking-span-end
    .venv/bin/python tools/mutation_check.py --output runs/mutation --timeout 300

The tracked tree (plus untracked files git does not ignore) is copied once to a scratch folder. The selected
tests first run there unmutated; if they fail, nothing else runs (a failure must mean the mutation). Then
each mutation in MUTATIONS replaces one exact snippet of a file under src/ in the scratch copy, runs its
tests with PYTHONPATH=<scratch>/src (which wins over the venv's editable install of the real src/: checked
before anything runs), and restores the file. The working tree is never written.

CAUGHT: pytest exited 1 (a test failed). SURVIVED: it exited 0. ERROR: anything else (a collection error,
an internal error, a timeout). STALE: the snippet is no longer in the file exactly once (the code moved:
update the table). Writes OUTPUT/mutation.md and OUTPUT/mutation.json; exits 1 unless every mutation is
CAUGHT, 2 when the unmutated baseline fails. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTEST_ARGS = ["-x", "-q", "-p", "no:cacheprovider", "-m", "not gpu"]


@dataclass(frozen=True)
class Mutation:
    id: str
    file: str                # relative to the repository root, under src/
    old: str                 # must occur exactly once in the pristine file
    new: str
    tests: tuple[str, ...]   # pytest arguments (files or node ids), run in this order; -x stops at the first failure
    description: str


LOOP = "src/petqlora/train/loop.py"
CHECKPOINTS = "src/petqlora/train/checkpoints.py"
EVAL = "src/petqlora/evaluation/evaluate.py"
VALIDATE = "src/petqlora/gemma/validate_token_boundaries.py"
VALIDATE_TESTS = ("tests/test_validate_token_boundaries.py",)
RESUME_TESTS = ("tests/test_train_adapter.py::test_resumed_run_ends_with_the_same_adapter",)

MUTATIONS = [
    Mutation("masking-span-end", "src/petqlora/gemma/masking.py", "    return start, end + 1\n", "    return start, end\n",
             ("tests/test_masking.py",), "supervised span off by one: the end-of-turn token is not supervised"),
    Mutation("validate-span-check", VALIDATE, 'elif text != record["label"] + encoder.end_of_turn_text:',
             "elif False:", VALIDATE_TESTS, "validation never compares the supervised text with label + end of turn"),
    Mutation("validate-soft-token-count", VALIDATE, "elif counts[0] != expected:", "elif False:", VALIDATE_TESTS,
             "validation never compares an image's soft-token count with the processor's"),
    Mutation("validate-prefix", VALIDATE, "if supervised and ids[:supervised[0]] != prompt_ids:", "if False:",
             VALIDATE_TESTS, "validation never checks the evaluation prompt is the training prefix"),
    Mutation("validate-instruction-extra", VALIDATE, "extra = [c for c in named if c not in classes]", "extra = []",
             VALIDATE_TESTS, "check_instruction ignores classes the instruction names that are not labels"),
    Mutation("score-cached-targets", EVAL, "torch.tensor(c[1:], device=device)].sum()",
             "torch.tensor(c[:-1], device=device)].sum()",
             ("tests/test_evaluate.py::test_score_classes_equals_the_full_sequence_log_likelihood",),
             "score_classes (the Gemma 3 cached scorer) scores each candidate token against the wrong target"),
    Mutation("score-packed-positions", EVAL,
             "positions[row, at:at + len(tokens)] = torch.arange(p, p + len(tokens), device=device)",
             "positions[row, at:at + len(tokens)] = torch.arange(at, at + len(tokens), device=device)",
             ("tests/test_evaluate.py::test_packed_scorer_equals_the_full_sequence_log_likelihood",),
             "score_classes_packed places each candidate after the previous ones instead of right after the prompt"),
    Mutation("loss-mean-of-means", LOOP, 'answer_ids, reduction="sum") / n_tokens', "answer_ids) / len(encoded)",
             ("tests/test_training_loss.py",),
             "forward_backward averages per-micro-batch means instead of sum / total supervised tokens"),
    Mutation("no-zero-grad", LOOP, "    trainer.optimizer.zero_grad(set_to_none=True)\n", "    pass\n",
             ("tests/test_training_loss.py::test_each_optimizer_step_sees_only_its_own_gradient",
              "tests/test_train_adapter.py::test_loss_falls_on_a_learnable_set"),
             "gradients are never cleared: each step adds onto the previous steps' gradients"),
    Mutation("split-unstratified", "src/petqlora/data/splits.py", "            pool[item.label].append(item)\n",
             '            pool["all"].append(item)\n', ("tests/test_prepare_data.py",),
             "validation/test are carved from one pool of every class, not per class"),
    Mutation("resume-rng", CHECKPOINTS, '    torch.set_rng_state(ckpt["rng"]["torch"])\n', "    pass\n", RESUME_TESTS,
             "restore_checkpoint does not restore torch's RNG (LoRA dropout masks differ after a resume)"),
    Mutation("resume-optimizer", CHECKPOINTS, '    optimizer.load_state_dict(ckpt["optimizer"]["optimizer"])\n',
             "    pass\n", RESUME_TESTS, "restore_checkpoint does not restore the optimizer's moments"),
    Mutation("resume-position", LOOP, "cfg.seed, state.epoch, state.batch_in_epoch)",
             "cfg.seed, state.epoch, 0)", RESUME_TESTS,
             "a resumed run restarts its epoch's batch plan instead of continuing at the saved position"),
    Mutation("lora-wrapper-target", "src/petqlora/gemma/lora.py", "            names.append(name)\n",
             '            names.append(name.removesuffix(".linear"))\n',
             ("tests/test_lora.py::test_default_targets_on_gemma4_31b",),
             "default LoRA targets are the Gemma4ClippableLinear wrappers instead of their inner .linear"),
    # test_backends_cloud_run first: with this mutation test_cloud_run's SIGTERM test waits on a never-ending execution.
    Mutation("sigterm-swallowed", "src/petqlora/cloud/cloud_run.py", "        raise SystemExit(128 + signal.SIGTERM)\n",
             "        pass\n", ("tests/test_backends_cloud_run.py", "tests/test_cloud_run.py"),
             "cancel_on_sigterm's handler swallows SIGTERM: the execution is never cancelled"),
    Mutation("sigterm-not-cancelled", "src/petqlora/cloud/cloud_run.py",
             "except (CloudRunTimeoutError, KeyboardInterrupt, SystemExit):",
             "except (CloudRunTimeoutError, KeyboardInterrupt):", ("tests/test_cloud_run.py", "tests/test_backends_cloud_run.py"),
             "CloudRunLauncher.run does not cancel on the SystemExit that cancel_on_sigterm raises"),
]


def copy_tree(dest: Path) -> int:
    """Copy tracked and untracked-but-not-ignored files (as they are in the working tree) into `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    n = 0
    for rel in sorted(set(filter(None, listed))):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
            n += 1
    return n


def scratch_env(scratch: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(scratch / "src"), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no .pyc of a mutated file can outlive its restore
    env["HYPOTHESIS_PROFILE"] = "ci"      # the same examples on every run (tests/conftest.py)
    env["COLUMNS"] = "240"                # pytest cuts its FAILED lines to the terminal width
    return env


def assert_imports_scratch(scratch: Path, env: dict[str, str]) -> None:
    """The editable install points at the real src/; PYTHONPATH must come first, or nothing is mutated."""
    found = subprocess.run([sys.executable, "-c", "import petqlora; print(petqlora.__file__)"], cwd=scratch,
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    expected = (scratch / "src" / "petqlora" / "__init__.py").resolve()
    assert Path(found).resolve() == expected, f"import petqlora resolves to {found}, not the scratch copy {expected}"


def run_pytest(scratch: Path, env: dict[str, str], tests: tuple[str, ...], timeout: float) -> tuple[int | None, str]:
    """pytest's exit code (None on a timeout) and its output; a timed-out run is killed with its children."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *tests, *PYTEST_ARGS], cwd=scratch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def evidence(output: str) -> str:
    """The first FAILED/ERROR line of pytest's summary, else its last line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    hits = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR "))]
    return (hits or lines or [""])[0 if hits else -1][:300]


def check_one(m: Mutation, scratch: Path, env: dict[str, str], timeout: float) -> dict:
    row = {"id": m.id, "file": m.file, "tests": list(m.tests), "description": m.description,
           "old": m.old, "new": m.new, "result": "", "seconds": 0.0, "detail": ""}
    target = scratch / m.file
    pristine = target.read_text()  # the copy of the working tree's file, unmutated
    count = pristine.count(m.old)
    if count != 1:
        row.update(result="STALE", detail=f"the old snippet occurs {count} times in {m.file} (expected once)")
        return row
    started = time.monotonic()
    try:
        target.write_text(pristine.replace(m.old, m.new))
        code, output = run_pytest(scratch, env, m.tests, timeout)
    finally:
        target.write_text(pristine)
    row["seconds"] = round(time.monotonic() - started, 1)
    if code == 1:
        row.update(result="CAUGHT", detail=evidence(output))
    elif code == 0:
        row.update(result="SURVIVED", detail=evidence(output))
    elif code is None:
        row.update(result="ERROR", detail=f"timed out after {timeout:.0f} s")
    else:
        row.update(result="ERROR", detail=f"pytest exit code {code}: {evidence(output)}")
    return row


def markdown(rows: list[dict]) -> str:
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| mutation | file | tests | result | seconds | detail |", "| --- | --- | --- | --- | ---: | --- |"]
    lines += [f"| {r['id']}: {cell(r['description'])} | {r['file']} | {cell(' '.join(r['tests']))} | "
              f"**{r['result']}** | {r['seconds']} | {cell(r['detail'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def baseline(scratch: Path, env: dict[str, str], selected: list[Mutation], timeout: float) -> None:
    """Every selected test on the unmutated copy; exits 2 when they fail (a broken baseline proves nothing)."""
    tests = tuple(dict.fromkeys(t for m in selected for t in m.tests))
    started = time.monotonic()
    code, output = run_pytest(scratch, env, tests, timeout)
    print(f"baseline: {len(tests)} test argument(s), exit code {code}, {time.monotonic() - started:.0f} s", flush=True)
    if code != 0:
        print(output[-4000:], file=sys.stderr)
        why = f"timed out after {timeout:.0f} s" if code is None else evidence(output)
        print(f"the tests fail without any mutation: fix them first ({why})", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/mutation", help="folder for mutation.md and mutation.json")
    parser.add_argument("--only", action="append", metavar="ID", help="run only this mutation (repeatable)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation's pytest run")
    args = parser.parse_args(argv)
    ids = [m.id for m in MUTATIONS]
    assert len(set(ids)) == len(ids), "mutation ids must be unique"
    unknown = set(args.only or []) - set(ids)
    if unknown:
        parser.error(f"unknown mutation id(s) {sorted(unknown)}; known: {', '.join(ids)}")
    selected = [m for m in MUTATIONS if not args.only or m.id in args.only]
    scratch = Path(tempfile.mkdtemp(prefix="petqlora-mutation-"))
    try:
        print(f"copied {copy_tree(scratch)} files to {scratch}", flush=True)
        env = scratch_env(scratch)
        assert_imports_scratch(scratch, env)
        baseline(scratch, env, selected, args.timeout * max(1, len(selected)))
        rows = []
        for m in selected:
            rows.append(check_one(m, scratch, env, args.timeout))
            print(f"{m.id}: {rows[-1]['result']} ({rows[-1]['seconds']} s) {rows[-1]['detail']}", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    table = markdown(rows)
    print("\n" + table)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mutation.md").write_text("# Mutation check\n\n" + table)
    (out / "mutation.json").write_text(json.dumps(rows, indent=1) + "\n")
    bad = [r for r in rows if r["result"] != "CAUGHT"]
    print(f"{len(rows) - len(bad)}/{len(rows)} caught; written to {out}/mutation.md and mutation.json")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
