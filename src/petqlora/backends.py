"""Where a GPU step runs: a local subprocess or a Cloud Run Job execution, behind one :class:`Backend`.

A GPU step (training, evaluation of the large models) is one entrypoint, ``python -m <module> *args``.
:class:`Backend` runs it where its ``kind`` says (a config value: the ``backend`` pipeline parameter), and
maps the paths the step sees to the paths the entrypoint sees. :func:`run_local` is the local backend; the
Cloud Run backend is :class:`petqlora.cloud.cloud_run.CloudRunLauncher`, imported only when used.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from petqlora.cloud.names import check_entrypoint_module
from petqlora.cloud.storage import local_path
from petqlora.logs import LOG_FORMAT_ENV, ChildLogRelay
from petqlora.problems import Problems
from petqlora.train.progress import PROGRESS_FILE, ProgressWatcher

if TYPE_CHECKING:  # the Cloud Run client library is imported only when a job is built
    from petqlora.cloud.cloud_run_spec import CloudRunJobConfig

__all__ = ["EVALUATE_MODULE", "TRAIN_MODULE", "Backend", "LocalRunError", "run_local"]

# The entrypoints a Backend runs (on the GPU in the cloud); run_checks builds their Cloud Run jobs up front.
TRAIN_MODULE = "petqlora.train.train_adapter"
EVALUATE_MODULE = "petqlora.evaluation.evaluate"

log = logging.getLogger("petqlora.backends")

class LocalRunError(RuntimeError):
    """The local entrypoint subprocess exited with a non-zero code."""

    def __init__(self, message: str, *, returncode: int, cmd: list[str]) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.cmd = cmd


def run_local(module: str, args: list[str], *, env: dict[str, str] | None = None,
              log: Callable[[str], object] = print) -> None:
    """The local backend: ``sys.executable -m module *args`` as a subprocess, its output streamed to
    ``log`` line by line. ``env`` adds variables to the current environment."""
    p = Problems("run_local arguments")
    check_entrypoint_module(p, module)
    p.check(isinstance(args, (list, tuple)) and all(isinstance(a, str) for a in args), "args", args,
            "must be a list of strings")
    p.check(env is None or (isinstance(env, dict)
                            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())),
            "env", env, "must be a dict of str to str or None")
    p.raise_if_any()
    cmd = [sys.executable, "-m", module, *args]
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}  # unbuffered: stream, don't batch
    tail: collections.deque[str] = collections.deque(maxlen=20)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=child_env, bufsize=1)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
        returncode = proc.wait()
    except BaseException:
        proc.terminate()  # don't leave the step running behind an interrupted pipeline
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if returncode != 0:
        last = "\n".join(tail)
        raise LocalRunError(
            f"`python -m {module}` exited with code {returncode}; its last output lines:\n{last}\n"
            f"(command: {cmd})", returncode=returncode, cmd=cmd)


@dataclass(frozen=True)
class Backend:
    """Where the GPU entrypoints run: `local` (a subprocess) or `cloud_run` (a Cloud Run Job execution)."""

    kind: str = "local"
    project: str = ""
    region: str = ""
    job_prefix: str = "petqlora"  # jobs are named <job_prefix>-<step>-<8 hex of the job spec's hash>
    image: str = ""
    service_account: str = ""
    bucket: str = ""
    hf_token_secret: str = ""
    progress_every_s: float = 30.0  # how often the step reads and logs a running entrypoint's progress.json
    keep_jobs: int | None = 5  # Cloud Run jobs kept per step after a success (None: keep all, no run.jobs.delete)

    def __post_init__(self) -> None:
        if self.kind not in ("local", "cloud_run"):
            raise ValueError(f"backend={self.kind!r} must be 'local' or 'cloud_run'")
        if (isinstance(self.progress_every_s, bool) or not isinstance(self.progress_every_s, (int, float))
                or not self.progress_every_s > 0):
            raise ValueError(f"backend progress_every_s={self.progress_every_s!r} must be a number of seconds > 0, "
                             "e.g. 30")
        if self.kind == "cloud_run":
            missing = [n for n in ("project", "region", "image", "service_account", "bucket") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    f"backend kind cloud_run needs {missing}; fix: pass them in the `backend` pipeline parameter, e.g. "
                    "--param backend='{\"kind\": \"cloud_run\", \"image\": \"REGION-docker.pkg.dev/P/petqlora/"
                    "trainer:VERSION\", \"service_account\": \"petqlora-job@P.iam.gserviceaccount.com\", "
                    "\"bucket\": \"BUCKET\", \"hf_token_secret\": \"hf-token\"}' (and --project/--region)")
            try:
                self.mount_path  # the job mounts gs://<bucket> where Vertex mounts it: it must name a bucket
            except ValueError:
                raise ValueError(f"backend bucket={self.bucket!r}: is not a bucket name; fix: give the bare name, "
                                 "e.g. 'my-bucket' (no gs://, no path)") from None

    @property
    def mount_path(self) -> str:
        """Where the Cloud Run Job mounts its bucket: where Vertex mounts it for the step (``/gcs/<bucket>``),
        so the paths the step sees are the paths the job sees."""
        return local_path(f"gs://{self.bucket}")

    def path_arg(self, path: str) -> str:
        """A path as the entrypoint sees it: unchanged locally; on the job's bucket mount in Cloud Run."""
        if self.kind == "local":
            return path
        prefix = f"{self.mount_path}/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not under the Cloud Run Job's bucket mount {prefix}: use a pipeline root "
                             f"in gs://{self.bucket}")
        return path  # the job mounts the bucket at /gcs/<bucket>, the same path Vertex gives the step

    def job_config(self, module: str) -> CloudRunJobConfig:
        """The Cloud Run job that runs ``module`` (a CloudRunJobConfig: every field checked on construction);
        run_checks builds it before a run starts, so a bad image or bucket fails then, not at the GPU step."""
        from petqlora.cloud.cloud_run_spec import CloudRunJobConfig

        step = module.rsplit(".", 1)[-1].replace("_", "-")
        return CloudRunJobConfig(
            project=self.project, region=self.region, job_prefix=f"{self.job_prefix}-{step}",
            image=self.image, module=module, service_account=self.service_account, bucket=self.bucket,
            mount_path=self.mount_path, hf_token_secret=self.hf_token_secret or None, keep_jobs=self.keep_jobs)

    def run(self, module: str, args: list[str], task_id: str) -> None:
        """``python -m module *args`` where ``kind`` says, until it ends. Meanwhile the progress the entrypoint
        writes to OUTPUT/progress.json (train_adapter does) is logged here every ``progress_every_s`` seconds
        when it changed, for both kinds: the Cloud Run Job writes OUTPUT on the bucket mount, the same path this
        step reads (path_arg), so no API call is needed."""
        step = module.rsplit(".", 1)[-1]
        output = args[args.index("--output") + 1] if "--output" in args[:-1] else None
        watch = contextlib.nullcontext() if output is None else ProgressWatcher(
            os.path.join(output, PROGRESS_FILE), lambda line: log.info("%s progress: %s", step, line),
            self.progress_every_s)
        with watch:
            self._run(module, args, task_id)

    def _run(self, module: str, args: list[str], task_id: str) -> None:
        if self.kind == "local":
            # The child writes JSON records; each is logged here again with the child's severity, logger and
            # time, so a line has one timestamp and a child's warning stays a warning.
            run_local(module, args, env={LOG_FORMAT_ENV: "json"}, log=ChildLogRelay(log))
            return
        from petqlora.cloud.cloud_run import CloudRunLauncher, cancel_on_sigterm

        launcher = CloudRunLauncher(self.job_config(module))
        launcher.ensure_job()
        with cancel_on_sigterm():
            launcher.run(args, task_id)
