"""Data: the prepared dataset's format (manifest, splits, images), the source readers (Oxford, Hugging Face,
image folder, manifest), local reads that trust nothing (regular files under a byte cap, paths kept inside
the source's folder), class-name checks, ingest (read, check, hash, copy), duplicates over the whole
dataset (exact and perceptual, with fast Hamming search), splitting and leakage checks, the prepare_data
entrypoint and its report, the source fingerprint, and the synthetic pets set."""
