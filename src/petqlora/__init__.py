"""Fine-tune Gemma 4 with QLoRA to classify pet breeds, as a Kubeflow / Vertex AI pipeline."""

__version__ = "0.1.0"
