"""ServeConfig: the server's typed config, and how it is read from the command line and Vertex's AIP_*
environment (an explicit flag wins over the environment, the environment over the default)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from petqlora import schema
from petqlora.evaluation.evaluate import EvalConfig
from petqlora.problems import Problems
from petqlora.schema import field, required, same_as
from petqlora.serve import contract


@dataclass(frozen=True)
class ServeConfig:
    adapter: str = required("The registered adapter folder (train_adapter's OUTPUT/adapter, with serving.json) or "
                            "its gs:// URI; on Vertex, AIP_STORAGE_URI.", nonempty=True,
                            fix="pass --adapter runs/latest/pipeline_root/<run>/train-adapter/adapter/adapter, or "
                            "on Vertex register the model with its artifact URI (AIP_STORAGE_URI)")
    base_model: str | None = field(None, "Checkpoint folder, gs:// URI or Hub id of the base model; None: the one "
                                   "the adapter's serving.json names.")
    model_version: str | None = field(None, "What each prediction reports as model_version, e.g. NAME@VERSION; "
                                      "None: adapter-sha256:<16 hex> of the adapter's weights.")
    host: str = field("0.0.0.0", "Address to listen on (all interfaces in a container).", nonempty=True)
    port: int = field(contract.SERVING_PORT, "Port to listen on; on Vertex, AIP_HTTP_PORT.", low=1, high=65535)
    health_route: str = field(contract.HEALTH_ROUTE, "Health route; on Vertex, AIP_HEALTH_ROUTE.")
    predict_route: str = field(contract.PREDICT_ROUTE, "Predict route; on Vertex, AIP_PREDICT_ROUTE.")
    quantize: str = same_as(EvalConfig, "quantize")
    device: str = same_as(EvalConfig, "device")
    batch_size: int = same_as(EvalConfig, "batch_size")
    top_k: int = field(5, "Classes per prediction when the request's parameters.top_k does not say.", low=1)
    # The caps bound one request's memory: 32 images of 20 MP are ~2 GB as RGB before the processor resizes them.
    max_instances: int = field(contract.MAX_INSTANCES, "Most instances in one request; more is refused with 413.",
                               low=1)
    max_image_bytes: int = field(contract.MAX_IMAGE_BYTES, "Largest image accepted, in bytes after base64 "
                                 "decoding.", low=1)
    max_image_pixels: int = field(20_000_000, "Largest image accepted, in pixels, read from its header before "
                                  "decoding (a decompression-bomb guard; a 12 MP phone photo passes).", low=1)
    max_request_bytes: int = field(contract.MAX_REQUEST_BYTES, "Largest request body read, in bytes; the default "
                                   "holds max_instances images of max_image_bytes in base64 (what batch prediction "
                                   "sends).", low=1)
    allowed_gcs_prefixes: tuple[str, ...] = field((), "gs:// prefixes a gcs_uri instance may be read from; "
                                                  "empty: gcs_uri instances are refused.")
    cache_dir: str = field("/tmp/petqlora-serve", "Where a gs:// adapter or base model without a /gcs mount is "
                           "downloaded.", nonempty=True)

    def __post_init__(self) -> None:
        p = Problems("serve config")
        bad = schema.check(self, p)
        for name, example in (("health_route", contract.HEALTH_ROUTE), ("predict_route", contract.PREDICT_ROUTE)):
            if name not in bad:
                route = getattr(self, name)
                p.check(route.startswith("/") and " " not in route, name, route, "must be a path starting with /",
                        f"e.g. {example}")
        if not {"health_route", "predict_route"} & bad:
            p.check(self.health_route != self.predict_route, "predict_route", self.predict_route,
                    "must differ from health_route", "e.g. /predict and /health")
        if "device" not in bad:
            p.check(self.device in ("auto", "cpu") or self.device.startswith("cuda"), "device", self.device,
                    "must be auto, cpu or cuda[:N]")
        if "allowed_gcs_prefixes" not in bad:
            for prefix in self.allowed_gcs_prefixes:
                p.check(prefix.startswith("gs://") and len(prefix.rstrip("/")) > len("gs://"), "allowed_gcs_prefixes",
                        prefix, "each must be a gs://BUCKET[/PATH] prefix", "e.g. gs://my-bucket/uploads/")
        p.raise_if_any()


# Vertex's serving contract: the environment variable that sets each field.
ENVIRONMENT = {"adapter": contract.ENV_STORAGE_URI, "port": contract.ENV_PORT,
               "health_route": contract.ENV_HEALTH_ROUTE, "predict_route": contract.ENV_PREDICT_ROUTE}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    """One flag per ServeConfig field, its help the field's description."""
    out = argparse.ArgumentParser(prog="python -m petqlora.serve", description=__doc__.split("\n\n")[0])
    for f in dataclasses.fields(ServeConfig):
        env = f" (environment: {ENVIRONMENT[f.name]})" if f.name in ENVIRONMENT else ""
        out.add_argument(_flag(f.name), dest=f.name, default=None, metavar=f.name.upper(),
                         help=f.metadata["rule"].help + env)
    return out


def read_config(argv: list[str] | None, environ: Mapping[str, str]) -> ServeConfig:
    """The config from command-line flags over AIP_* variables over the defaults; every problem raised at once
    as ValueError (argparse's own errors exit with 2)."""
    args = vars(parser().parse_args(argv))
    values = {name: environ[env] for name, env in ENVIRONMENT.items() if environ.get(env)}
    from_env = {name: ENVIRONMENT[name] for name in values if args.get(name) is None}
    values.update({name: value for name, value in args.items() if value is not None})
    try:
        return schema.from_mapping(ServeConfig, values, "serve config (flags and AIP_* environment)", text=True)
    except ValueError as exc:
        # on Vertex the value came from a variable, not a flag: name the variable to fix
        p = Problems("serve config (flags and AIP_* environment)")
        p.items = [next((f"{line} (from {env})" for name, env in from_env.items() if line.startswith(f"{name}=")),
                        line) for line in getattr(exc, "problems", (str(exc),))]
        p.raise_if_any()
        raise
