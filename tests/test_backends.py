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


VERTEX = dict(CLOUD, kind="vertex_custom_job", machine_type="a3-highgpu-8g", accelerator_type="NVIDIA_H100_80GB",
              accelerator_count=8)


def test_kfp_struct_floats_of_whole_numbers_are_the_backend_s_integers():
    # KFP hands a dict parameter's numbers to a step as floats: {"accelerator_count": 8} arrives as 8.0
    backend = Backend(**{**VERTEX, "accelerator_count": 8.0, "replica_count": 1.0, "boot_disk_gb": 500.0,
                         "max_parallel": 2.0, "keep_jobs": 5.0, "progress_every_s": 30})
    assert (backend.accelerator_count, backend.replica_count, backend.boot_disk_gb, backend.max_parallel,
            backend.keep_jobs) == (8, 1, 500, 2, 5)
    assert all(type(v) is int for v in (backend.accelerator_count, backend.max_parallel, backend.keep_jobs))
    assert backend.job_config("petqlora.train.train_adapter").processes == 8


@pytest.mark.parametrize("field, value, expected", [
    ("accelerator_count", "8", "accelerator_count='8': must be an integer"),
    ("accelerator_count", 8.5, "accelerator_count=8.5: must be an integer"),
    ("replica_count", True, "replica_count=True: must be an integer"),
    ("max_parallel", True, "max_parallel=True: must be an integer or null"),
    ("progress_every_s", float("inf"), "progress_every_s=inf: must be a finite number"),
    ("kind", 5, "kind=5: must be a string"),
])
def test_a_backend_field_of_the_wrong_type_is_refused_naming_it(field, value, expected):
    with pytest.raises(ValueError) as info:
        Backend(**{**VERTEX, field: value})
    assert expected in str(info.value) and "fix:" in str(info.value), str(info.value)
