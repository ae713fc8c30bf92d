"""Training: the typed training config, example selection and the batch plan, the QLoRA loop, checkpoints,
the image-feature cache, the loss-curve plot and the train_adapter entrypoint (the same one a Cloud Run Job
and a local subprocess run)."""
