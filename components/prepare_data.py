from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Output

from components.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def prepare_data(
    source: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    max_per_class_train: int,
    max_per_class_eval: int,
    on_bad_input: str,
    source_fingerprint: str,
    dataset: Output[Dataset],
    report: Output[Markdown],
    metrics: Output[Metrics],
):
    """Prepare data: Oxford-IIIT Pet, a Hugging Face copy, an image folder or a manifest into stratified,
    hashed, chat-formatted train/validation/test splits. Caps of 0 mean no cap. source_fingerprint (from
    fingerprint_source) is recorded with the dataset, and as an input it keys the cache: a cached dataset
    is reused only while the source is unchanged."""
    from petqlora.data.prepare_config import pipeline_options
    from petqlora.steps import log_metrics, run_prepare_data

    values = run_prepare_data(
        source, dataset.path, report.path, source_fingerprint=source_fingerprint, **pipeline_options(
            seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, max_per_class_train=max_per_class_train,
            max_per_class_eval=max_per_class_eval, on_bad_input=on_bad_input))
    dataset.metadata.update({"dataset_hash": values.pop("dataset_hash"), "source": source,
                             "source_fingerprint": source_fingerprint})
    log_metrics(metrics, values)
