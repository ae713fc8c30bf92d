"""Data: the prepared dataset's format (manifest, splits, images), the source readers (Oxford, Hugging Face,
image folder, manifest), splitting and leakage checks, the prepare_data entrypoint and the synthetic pets set."""
