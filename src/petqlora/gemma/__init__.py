"""Gemma: everything that knows the model family: prompts, the chat-format encoding, token-boundary masking
and its validate_token_boundaries entrypoint, processors, LoRA targeting, model loading and the tiny models."""
