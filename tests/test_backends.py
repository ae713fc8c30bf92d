"""backends: the local backend's real subprocess, and where the Cloud Run backend points the entrypoint."""

from __future__ import annotations

import textwrap

import pytest

from petqlora.backends import Backend, LocalRunError, run_local

CLOUD = dict(kind="cloud_run", project="my-proj", region="us-central1",
             image="us-central1-docker.pkg.dev/my-proj/petqlora/trainer:0.1.0",
             service_account="petqlora-job@my-proj.iam.gserviceaccount.com", bucket="my-bucket")


@pytest.fixture
def tiny_module(tmp_path):
    (tmp_path / "tiny_step.py").write_text(textwrap.dedent("""
        import os, sys
        print("args", sys.argv[1:])
        print("task", os.environ.get("PETQLORA_TASK_ID"))
        sys.exit(int(os.environ.get("EXIT_CODE", "0")))
    """))
    return {"PYTHONPATH": str(tmp_path)}


def test_run_local_streams_output(tiny_module):
    lines: list[str] = []
    run_local("tiny_step", ["--epochs", "1"], env={**tiny_module, "PETQLORA_TASK_ID": "t1"}, log=lines.append)
    assert lines == ["args ['--epochs', '1']", "task t1"]


def test_run_local_raises_with_the_exit_code(tiny_module):
    with pytest.raises(LocalRunError, match="exited with code 3") as info:
        run_local("tiny_step", [], env={**tiny_module, "EXIT_CODE": "3"}, log=[].append)
    assert info.value.returncode == 3 and "task None" in str(info.value)


def test_run_local_validates_arguments():
    with pytest.raises(ValueError, match=r"module=.*\n.*args="):
        run_local("not a module", "--x")  # type: ignore[arg-type]


def test_cloud_run_backend_mounts_its_bucket_where_vertex_does():
    backend = Backend(**CLOUD)
    assert backend.mount_path == "/gcs/my-bucket"
    assert backend.path_arg("/gcs/my-bucket/root/data") == "/gcs/my-bucket/root/data"
    with pytest.raises(ValueError, match="not under the Cloud Run Job's bucket mount /gcs/my-bucket/"):
        backend.path_arg("/gcs/other/root/data")
    assert Backend().path_arg("runs/local/data") == "runs/local/data"


def test_backend_kind_is_a_config_value():
    with pytest.raises(ValueError, match="must be one of 'local', 'cloud_run', 'vertex_custom_job'"):
        Backend(kind="k8s")
    with pytest.raises(ValueError, match=r"needs \['image', 'service_account', 'bucket'\]"):
        Backend(kind="cloud_run", project="my-proj", region="us-central1")
