from kfp import dsl
from kfp.dsl import Markdown, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def fingerprint_source(source: str, run_id: str, summary: Output[Markdown]) -> str:
    """Fingerprint source: a digest of every file prepare_data would read (paths, sizes, modification
    times; for Cloud Storage, object generations; for a Hub name, its revision), without reading pixels.
    Never cached: prepare_data takes the fingerprint as an input, so its cached dataset is reused exactly
    while the source is unchanged. run_id makes every run's inputs unique, so even a run submitted with
    caching forced on takes a fresh fingerprint."""
    from petqlora.steps import run_fingerprint_source

    print(f"run {run_id}: fingerprinting {source}")
    return run_fingerprint_source(source, summary.path)
