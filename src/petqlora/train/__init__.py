"""Training: the typed training config, checkpoints, the image-feature cache, the QLoRA loop and the
train_adapter entrypoint (the same one a Cloud Run Job and a local subprocess run)."""
