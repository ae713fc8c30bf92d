"""Where a GPU step runs: a local subprocess, a Cloud Run Job execution or a Vertex AI CustomJob, behind one
:class:`Backend`.

A GPU step (training, evaluation of the large models) is one entrypoint, ``python -m <module> *args``.
:class:`Backend` runs it where its ``kind`` says (a config value: the ``backend`` pipeline parameter), and
maps the paths the step sees to the paths the entrypoint sees. :func:`run_local` is the local backend; the
Cloud Run backend is :class:`petqlora.cloud.cloud_run.CloudRunLauncher` (one GPU), the Vertex one
:class:`petqlora.cloud.vertex_custom_job_launcher.CustomJobLauncher` (the GPUs of one machine, under torchrun),
imported only when used. :meth:`Backend.run_many` runs independent entrypoints at once (evaluation's models).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from petqlora import schema
from petqlora.cloud.names import check_entrypoint_module
from petqlora.cloud.storage import local_path
from petqlora.logs import LOG_FORMAT_ENV, ChildLogRelay
from petqlora.params import BACKEND_KINDS
from petqlora.problems import Problems
from petqlora.train.progress import PROGRESS_FILE, ProgressWatcher

if TYPE_CHECKING:  # the Cloud Run client library is imported only when a job is built
    from petqlora.cloud.cloud_run_spec import CloudRunJobConfig
    from petqlora.cloud.vertex_custom_job import CustomJobConfig

__all__ = ["EVALUATE_MODULE", "TRAIN_MODULE", "Backend", "GpuRunsError", "LocalRunError", "RunStopped", "run_local"]

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


class RunStopped(SystemExit):
    """Raised in a run that :meth:`Backend.run_many` stopped (another run failed, or the step was cancelled).
    A SystemExit, as SIGTERM's is: the launchers cancel their execution or job on it."""

    def __init__(self) -> None:
        super().__init__(143)


class GpuRunsError(RuntimeError):
    """One or more runs of :meth:`Backend.run_many` failed; ``failures`` maps each one's name to its error."""

    def __init__(self, message: str, failures: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.failures = failures


def run_local(module: str, args: list[str], *, env: dict[str, str] | None = None,
              log: Callable[[str], object] = print, stop: threading.Event | None = None) -> None:
    """The local backend: ``sys.executable -m module *args`` as a subprocess, its output streamed to
    ``log`` line by line. ``env`` adds variables to the current environment. Setting ``stop`` terminates the
    subprocess and raises :class:`RunStopped`."""
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
    if stop is not None:  # the reading loop below blocks on the child's output: a watcher ends the child
        threading.Thread(target=_terminate_on, args=(stop, proc), daemon=True, name=f"stop-{module}").start()
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
    if stop is not None and stop.is_set():
        raise RunStopped()
    if returncode != 0:
        last = "\n".join(tail)
        raise LocalRunError(
            f"`python -m {module}` exited with code {returncode}; its last output lines:\n{last}\n"
            f"(command: {cmd})", returncode=returncode, cmd=cmd)


def _terminate_on(stop: threading.Event, proc: subprocess.Popen) -> None:
    while proc.poll() is None:
        if stop.wait(0.2):
            proc.terminate()
            return


@dataclass(frozen=True)
class Backend:
    """Where the GPU entrypoints run: `local` (a subprocess), `cloud_run` (a Cloud Run Job execution on one
    GPU) or `vertex_custom_job` (a Vertex AI CustomJob on the GPUs of one machine, training under torchrun)."""

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
    max_parallel: int | None = None  # runs of run_many at once (evaluation's models); None: all
    # vertex_custom_job only: the machine (its GPU type and count must match it), one replica, the boot disk.
    machine_type: str = ""
    accelerator_type: str = ""
    accelerator_count: int = 0
    replica_count: int = 1
    boot_disk_gb: int = 500

    def __post_init__(self) -> None:
        self._check_types()
        if self.kind not in BACKEND_KINDS:
            raise ValueError(f"backend={self.kind!r} must be one of {', '.join(map(repr, BACKEND_KINDS))}")
        if (isinstance(self.progress_every_s, bool) or not isinstance(self.progress_every_s, (int, float))
                or not self.progress_every_s > 0):
            raise ValueError(f"backend progress_every_s={self.progress_every_s!r} must be a number of seconds > 0, "
                             "e.g. 30")
        if self.max_parallel is not None and (isinstance(self.max_parallel, bool)
                                              or not isinstance(self.max_parallel, int) or self.max_parallel < 1):
            raise ValueError(f"backend max_parallel={self.max_parallel!r} must be an integer >= 1 (runs at once), "
                             "or null for all at once")
        vertex_only = [n for n in _VERTEX_FIELDS if getattr(self, n) != _VERTEX_FIELDS[n]]
        if self.kind != "vertex_custom_job" and vertex_only:
            raise ValueError(f"backend kind {self.kind} does not take {vertex_only}: they are vertex_custom_job "
                             "fields; fix: drop them, or set \"kind\": \"vertex_custom_job\"")
        if self.kind == "local":
            return
        needed = ("project", "region", "image", "service_account", "bucket") + (
            ("machine_type", "accelerator_type", "accelerator_count") if self.kind == "vertex_custom_job" else ())
        missing = [n for n in needed if not getattr(self, n)]
        if missing:
            raise ValueError(f"backend kind {self.kind} needs {missing}; fix: pass them in the `backend` pipeline "
                             f"parameter, e.g. --param backend='{_EXAMPLES[self.kind]}' (and --project/--region)")
        try:
            self.mount_path  # the job mounts gs://<bucket> where Vertex mounts it: it must name a bucket
        except ValueError:
            raise ValueError(f"backend bucket={self.bucket!r}: is not a bucket name; fix: give the bare name, "
                             "e.g. 'my-bucket' (no gs://, no path)") from None

    def _check_types(self) -> None:
        """Each field as its annotation types it: KFP hands a dict parameter's numbers over as floats, so a whole
        one is taken as the integer it spells ({"accelerator_count": 8} arrives as 8.0); any other wrong type (a
        bool or "8" for an integer, inf) is refused, naming the field."""
        p = Problems("backend")
        hints = schema.types_of(Backend)
        examples = {**{f.name: f.default for f in dataclasses.fields(Backend)}, "max_parallel": 2,
                    **json.loads(_EXAMPLES["vertex_custom_job"])}
        for f in dataclasses.fields(self):
            value = schema.coerce(hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)  # frozen: the typed value replaces its spelling
            problem = schema.type_problem(hints[f.name], value)
            if problem:
                p.add(f.name, value, problem, f"e.g. {json.dumps(examples[f.name])}")
        p.raise_if_any()

    @property
    def mount_path(self) -> str:
        """Where the GPU job sees its bucket: where Vertex mounts it for the step (``/gcs/<bucket>``), so the
        paths the step sees are the paths the job sees (a Cloud Run volume there; a CustomJob's own /gcs)."""
        return local_path(f"gs://{self.bucket}")

    def path_arg(self, path: str) -> str:
        """A path as the entrypoint sees it: unchanged locally; on the job's bucket mount in the cloud."""
        if self.kind == "local":
            return path
        prefix = f"{self.mount_path}/"
        if not path.startswith(prefix):
            job = "Cloud Run Job" if self.kind == "cloud_run" else "Vertex CustomJob"
            raise ValueError(f"{path} is not under the {job}'s bucket mount {prefix}: use a pipeline root "
                             f"in gs://{self.bucket}")
        return path  # the job sees the bucket at /gcs/<bucket>, the same path Vertex gives the step

    def job_config(self, module: str) -> CloudRunJobConfig | CustomJobConfig:
        """The cloud job that runs ``module`` (a CloudRunJobConfig or a CustomJobConfig: every field checked on
        construction); run_checks builds it before a run starts, so a bad image, bucket or machine fails then,
        not at the GPU step. On Vertex, training takes every GPU of the machine (torchrun, one process each);
        another step (evaluation) one process on the one-GPU machine of the same GPU."""
        step = module.rsplit(".", 1)[-1].replace("_", "-")
        if self.kind == "vertex_custom_job":
            from petqlora.cloud.vertex_custom_job import MACHINES, CustomJobConfig

            machine, count, given = self.machine_type, self.accelerator_count, MACHINES.get(self.machine_type)
            if module != TRAIN_MODULE and given is not None and (given.accelerator_type, given.accelerator_count) \
                    == (self.accelerator_type, self.accelerator_count):  # else the same refusal as training's
                machine, count = given.one_gpu, MACHINES[given.one_gpu].accelerator_count
            return CustomJobConfig(
                project=self.project, region=self.region, display_prefix=f"{self.job_prefix}-{step}",
                image=self.image, module=module, service_account=self.service_account, bucket=self.bucket,
                machine_type=machine, accelerator_type=self.accelerator_type, accelerator_count=count,
                processes=count if module == TRAIN_MODULE else 1, replica_count=self.replica_count,
                boot_disk_gb=self.boot_disk_gb, hf_token_secret=self.hf_token_secret or None)
        from petqlora.cloud.cloud_run_spec import CloudRunJobConfig

        return CloudRunJobConfig(
            project=self.project, region=self.region, job_prefix=f"{self.job_prefix}-{step}",
            image=self.image, module=module, service_account=self.service_account, bucket=self.bucket,
            mount_path=self.mount_path, hf_token_secret=self.hf_token_secret or None, keep_jobs=self.keep_jobs)

    def run(self, module: str, args: list[str], task_id: str, *, stop: threading.Event | None = None,
            label: str | None = None) -> None:
        """``python -m module *args`` where ``kind`` says, until it ends. Meanwhile the progress the entrypoint
        writes to OUTPUT/progress.json (train_adapter does) is logged here every ``progress_every_s`` seconds
        when it changed, for every kind: the cloud job writes OUTPUT on the bucket mount, the same path this
        step reads (path_arg), so no API call is needed. ``stop``: setting it stops the run (the subprocess
        ends, the cloud job is cancelled) with :class:`RunStopped`; ``label`` prefixes its log lines."""
        step = label or module.rsplit(".", 1)[-1]
        output = args[args.index("--output") + 1] if "--output" in args[:-1] else None
        watch = contextlib.nullcontext() if output is None else ProgressWatcher(
            os.path.join(output, PROGRESS_FILE), lambda line: log.info("%s progress: %s", step, line),
            self.progress_every_s)
        with watch:
            self._run(module, args, task_id, stop, label)

    def _run(self, module: str, args: list[str], task_id: str, stop: threading.Event | None,
             label: str | None) -> None:
        if self.kind == "local":
            # The child writes JSON records; each is logged here again with the child's severity, logger and
            # time, so a line has one timestamp and a child's warning stays a warning.
            relay = ChildLogRelay(log)
            run_local(module, args, env={LOG_FORMAT_ENV: "json"}, stop=stop,
                      log=relay if label is None else lambda line: _relay_labelled(relay, label, line))
            return
        from petqlora.cloud.cloud_run import CloudRunLauncher, cancel_on_sigterm

        options = {} if stop is None else {"sleep": _stoppable_sleep(stop)}
        if label is not None:
            options["log"] = lambda line: print(f"[{label}] {line}", flush=True)
        if self.kind == "vertex_custom_job":
            from petqlora.cloud.vertex_custom_job_launcher import CustomJobLauncher

            launcher = CustomJobLauncher(self.job_config(module), **options)
        else:
            launcher = CloudRunLauncher(self.job_config(module), **options)
            launcher.ensure_job()
        with cancel_on_sigterm():  # a no-op in run_many's threads: run_many's own handler sets `stop` instead
            launcher.run(args, task_id)

    def run_many(self, runs: Mapping[str, tuple[str, list[str], str]]) -> None:
        """Run independent entrypoints at once, ``max_parallel`` at a time: ``runs`` maps a name to
        ``(module, args, task_id)``. Each run is its own subprocess, Cloud Run execution or CustomJob, so the
        wall time is the slowest run's, not the sum. Their log lines carry their name. When one fails, the others
        are stopped (cancelled in the cloud) and waited for, and :class:`GpuRunsError` names every failed run;
        SIGTERM stops them all and raises SystemExit(143)."""
        from petqlora.cloud.cloud_run import cancel_on_sigterm

        stop = threading.Event()
        failures: dict[str, BaseException] = {}

        def one(name: str, module: str, args: list[str], task_id: str) -> None:
            if stop.is_set():  # queued behind max_parallel when another run failed
                raise RunStopped()
            self.run(module, args, task_id, stop=stop, label=name)

        pool = ThreadPoolExecutor(max_workers=min(len(runs), self.max_parallel or len(runs)) or 1,
                                  thread_name_prefix="gpu-run")
        try:
            with cancel_on_sigterm():
                futures = {pool.submit(one, name, *run): name for name, run in runs.items()}
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        if future.exception() is not None and not isinstance(future.exception(), RunStopped):
                            failures[futures[future]] = future.exception()
                            stop.set()
        except BaseException:
            stop.set()  # SIGTERM or Ctrl-C here: every run stops (and cancels its job) before this re-raises
            raise
        finally:
            pool.shutdown(wait=True)
        if failures:
            lines = "\n".join(f"  - {name}: {exc}" for name, exc in failures.items())
            raise GpuRunsError(f"{len(failures)} of {len(runs)} runs failed ({', '.join(failures)}); the others "
                               f"were stopped:\n{lines}", failures) from next(iter(failures.values()))


_VERTEX_FIELDS = {"machine_type": "", "accelerator_type": "", "accelerator_count": 0, "replica_count": 1,
                  "boot_disk_gb": 500}
_COMMON_EXAMPLE = ('"image": "REGION-docker.pkg.dev/P/petqlora/trainer:VERSION", "service_account": '
                   '"petqlora-job@P.iam.gserviceaccount.com", "bucket": "BUCKET", "hf_token_secret": "hf-token"')
_EXAMPLES = {
    "cloud_run": f'{{"kind": "cloud_run", {_COMMON_EXAMPLE}}}',
    "vertex_custom_job": f'{{"kind": "vertex_custom_job", "machine_type": "a3-highgpu-8g", "accelerator_type": '
                         f'"NVIDIA_H100_80GB", "accelerator_count": 8, {_COMMON_EXAMPLE}}}',
}


def _relay_labelled(relay: ChildLogRelay, label: str, line: str) -> None:
    record = relay.record(line)
    record.msg = f"[{label}] {record.msg}"
    relay.logger.handle(record)


def _stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A launcher's sleep that ends in :class:`RunStopped` once ``stop`` is set: the launcher cancels its job."""
    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise RunStopped()
    return sleep
