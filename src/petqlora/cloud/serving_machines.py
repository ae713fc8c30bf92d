"""The machine a registered version serves on (a Vertex endpoint or a batch prediction job): ServingMachine,
the typed settings shared by `deploy`, `batch-predict` and the pipeline's ``deploy`` parameter, and the
table of machine types and the GPUs they carry, checked before any request is sent.

The default is g4-standard-48 with one NVIDIA RTX PRO 6000 (96 GB): the GPU the adapter is trained and
evaluated on, so the server scores with the same kernels and numerics as evaluation, and room to spare
for Gemma 4 31B in 4-bit NF4 (about 17 GiB of weights, REFERENCE.md) plus the packed scorer's batches of
280 soft tokens per image. a3-highgpu-1g (one H100 80GB) fits as well; one L4 (24 GB, g2-standard-*)
leaves ~5 GiB beside the weights and is refused for that reason. Pure: no SDK import here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from petqlora import schema
from petqlora.problems import Problems
from petqlora.schema import field

__all__ = ["ACCELERATOR_MEMORY_GB", "FIELDS", "GPUS_OF_MACHINE", "MIN_GPU_MEMORY_GB", "ServingMachine", "machine_problems",
           "parse_machine"]

# machine type -> (accelerator type, GPUs attached). Vertex prediction attaches GPUs only in these
# fixed pairs for the A3/G2/G4 families (the GPU count is part of the machine type).
GPUS_OF_MACHINE: dict[str, tuple[str, int]] = {
    **{f"g2-standard-{n}": ("NVIDIA_L4", 1) for n in (4, 8, 12, 16, 32)},
    "g2-standard-24": ("NVIDIA_L4", 2), "g2-standard-48": ("NVIDIA_L4", 4), "g2-standard-96": ("NVIDIA_L4", 8),
    "g4-standard-48": ("NVIDIA_RTX_PRO_6000", 1), "g4-standard-96": ("NVIDIA_RTX_PRO_6000", 2),
    "g4-standard-192": ("NVIDIA_RTX_PRO_6000", 4), "g4-standard-384": ("NVIDIA_RTX_PRO_6000", 8),
    "a2-ultragpu-1g": ("NVIDIA_A100_80GB", 1), "a2-ultragpu-2g": ("NVIDIA_A100_80GB", 2),
    "a3-highgpu-1g": ("NVIDIA_H100_80GB", 1), "a3-highgpu-2g": ("NVIDIA_H100_80GB", 2),
    "a3-highgpu-4g": ("NVIDIA_H100_80GB", 4), "a3-highgpu-8g": ("NVIDIA_H100_80GB", 8),
    "a3-ultragpu-8g": ("NVIDIA_H200_141GB", 8),
}
ACCELERATOR_MEMORY_GB = {"NVIDIA_L4": 24, "NVIDIA_RTX_PRO_6000": 96, "NVIDIA_A100_80GB": 80,
                         "NVIDIA_H100_80GB": 80, "NVIDIA_H200_141GB": 141}
# One server process holds the whole model on one GPU: 31B in NF4 (~17 GiB) plus the CUDA context and the
# scorer's activations need more than an L4 has.
MIN_GPU_MEMORY_GB = 40


@dataclass(frozen=True)
class ServingMachine:
    """Where a registered version serves: one GPU machine per replica."""

    machine_type: str = field("g4-standard-48", "Vertex machine type of each replica (its GPUs come with it).",
                              allowed=tuple(GPUS_OF_MACHINE))
    accelerator_type: str = field("NVIDIA_RTX_PRO_6000", "GPU type attached to each replica (what the machine "
                                  "type carries).", allowed=tuple(ACCELERATOR_MEMORY_GB))
    accelerator_count: int = field(1, "GPUs per replica (what the machine type carries).", low=1)
    min_replica_count: int = field(1, "Replicas always up (an endpoint) or started with (batch prediction).", low=1)
    max_replica_count: int = field(1, "Most replicas autoscaling may run.", low=1)
    service_account: str = field("", "Service account the server runs as (reads the adapter); empty: Vertex's "
                                 "default one.")

    def __post_init__(self) -> None:
        problems = Problems("serving machine")
        wrong = schema.check(self, problems)
        _check_pairs(self, problems, wrong)
        problems.raise_if_any()

    def machine_spec(self) -> Any:
        """The request's MachineSpec (aiplatform_v1)."""
        from google.cloud.aiplatform.compat.types import machine_resources

        return machine_resources.MachineSpec(machine_type=self.machine_type, accelerator_type=self.accelerator_type,
                                             accelerator_count=self.accelerator_count)


def _check_pairs(m: ServingMachine, p: Problems, wrong: set[str]) -> None:
    """The rules that join fields: the GPU the machine type carries, enough GPU memory, max >= min."""
    if not {"machine_type", "accelerator_type", "accelerator_count"} & wrong:
        gpu, count = GPUS_OF_MACHINE[m.machine_type]
        if (m.accelerator_type, m.accelerator_count) != (gpu, count):
            p.add("accelerator_type/accelerator_count", f"{m.accelerator_type} x {m.accelerator_count}",
                  f"machine type {m.machine_type} carries {count} x {gpu}",
                  f"set accelerator_type={gpu} and accelerator_count={count}, or pick the machine type of the GPU "
                  "you want (e.g. g4-standard-48: 1 x NVIDIA_RTX_PRO_6000, a3-highgpu-1g: 1 x NVIDIA_H100_80GB)")
        elif ACCELERATOR_MEMORY_GB[gpu] < MIN_GPU_MEMORY_GB:
            p.add("machine_type", m.machine_type,
                  f"its {gpu} has {ACCELERATOR_MEMORY_GB[gpu]} GB, under the {MIN_GPU_MEMORY_GB} GB the server needs "
                  "for Gemma 4 31B in 4-bit on one GPU", "use g4-standard-48 (1 x NVIDIA_RTX_PRO_6000, 96 GB) or "
                  "a3-highgpu-1g (1 x NVIDIA_H100_80GB)")
    if "service_account" not in wrong and m.service_account:  # else refused by Vertex only at deployment
        from petqlora.cloud.names import SERVICE_ACCOUNT_RE

        p.check(bool(SERVICE_ACCOUNT_RE.match(m.service_account)), "service_account", m.service_account,
                "must be a service account email", "use '<name>@<project>.iam.gserviceaccount.com', or leave it "
                "empty for Vertex's default one")
    if not {"min_replica_count", "max_replica_count"} & wrong:
        p.check(m.max_replica_count >= m.min_replica_count, "max_replica_count", m.max_replica_count,
                f"must be >= min_replica_count ({m.min_replica_count})", "raise max_replica_count")


def parse_machine(values: Mapping[str, Any], what: str = "serving machine") -> ServingMachine:
    """A ServingMachine from JSON, KFP or command-line values (defaults for the rest); every problem raised once.
    A machine type given alone brings the GPUs it carries ({"machine_type": "a3-highgpu-1g"} is one H100)."""
    if isinstance(values, Mapping) and values.get("machine_type") in GPUS_OF_MACHINE \
            and not {"accelerator_type", "accelerator_count"} & set(values):
        gpu, count = GPUS_OF_MACHINE[values["machine_type"]]
        values = {**values, "accelerator_type": gpu, "accelerator_count": count}
    try:
        return schema.from_mapping(ServingMachine, values, what)
    except ValueError as exc:  # a problem whose rule names no fix (a type, a range) gets the field's default
        p = Problems(what)
        defaults = dataclasses.asdict(ServingMachine())
        for item in getattr(exc, "problems", None) or (str(exc),):
            name = item.split("=", 1)[0]
            p.items.append(item if "; fix: " in item or name not in defaults
                           else f"{item}; fix: e.g. {json.dumps(defaults[name])} (the default)")
        p.raise_if_any()
        raise


def machine_problems(values: Mapping[str, Any]) -> list[str]:
    """What parse_machine refuses in `values`, one line each (none: a machine it accepts)."""
    try:
        parse_machine(values)
    except ValueError as exc:
        return list(getattr(exc, "problems", None) or (str(exc),))
    return []


FIELDS = tuple(f.name for f in dataclasses.fields(ServingMachine))
