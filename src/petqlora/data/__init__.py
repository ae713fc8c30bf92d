"""Data: the prepared dataset's format (manifest, splits, images), the source readers (Oxford, Hugging Face,
image folder, manifest), ingest (read, check, hash, copy), splitting and leakage checks, the prepare_data
entrypoint and its report, and the synthetic pets set."""
