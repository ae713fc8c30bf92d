"""The steps' one command-line contract, the same in a Cloud Run Job, a Vertex step and a local subprocess:

    python -m petqlora.<package>.<step> --dataset D --output O --config CONFIG.json

CONFIG.json holds the step's typed config (its dataclass's fields); it is parsed once, here, and every
problem with it is reported in one message. gs:// arguments are read through their /gcs mount.
Exit codes: 0 done, 1 the step refused its input (the message says why), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from petqlora import schema
from petqlora.logs import setup_logging


def read_config(config_cls: type, path: str | None, **fixed: Any) -> Any:
    """The config in the JSON file at ``path`` (none: the defaults), with ``fixed`` fields set."""
    from petqlora.cloud.storage import local_path

    values = json.loads(Path(local_path(path)).read_text(encoding="utf-8")) if path else {}
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: must hold a JSON object of {config_cls.__name__} fields")
    return schema.from_mapping(config_cls, {**values, **fixed}, f"{config_cls.__name__} (--config {path})")


def run_step(argv: list[str] | None, *, prog: str, description: str, config_cls: type,
             step: Callable[[str, str, Any], object], refused: tuple[type[BaseException], ...] = (),
             dataset_field: str | None = None) -> int:
    """Parse the contract, read the config, run ``step(dataset, output, config)``. ``dataset_field`` names
    a config field that takes the --dataset value (prepare_data's source)."""
    from petqlora.cloud.storage import local_path

    parser = argparse.ArgumentParser(prog=f"python -m {prog}", description=description)
    parser.add_argument("--dataset", required=True, help="the input dataset: a folder or gs:// URI")
    parser.add_argument("--output", required=True, help="the folder the step writes into (local or gs://)")
    parser.add_argument("--config", default=None,
                        help=f"a JSON file of {config_cls.__name__} fields; left out, the defaults")
    args = parser.parse_args(argv)
    # The runtime contract is read here: JSON records with a severity in a Cloud Run Job or when run_local
    # asks for them (PETQLORA_LOG_FORMAT), plain lines in a terminal; on stderr, stdout is left for a result line.
    setup_logging(os.environ)
    name = prog.rsplit(".", 1)[-1]
    log = logging.getLogger(prog)
    from petqlora.cloud.secrets import SecretAccessError, export_secret_env

    try:
        export_secret_env()  # a Vertex CustomJob passes the HF token by reference (petqlora.cloud.secrets)
        fixed = {dataset_field: args.dataset} if dataset_field else {}
        config = read_config(config_cls, args.config, **fixed)
    except (OSError, ValueError, SecretAccessError) as exc:
        log.error("%s: bad arguments: %s", name, exc)
        return 2
    try:
        step(local_path(args.dataset), local_path(args.output), config)
    except refused as exc:
        log.error("%s: refused: %s", name, exc)
        return 1
    return 0
