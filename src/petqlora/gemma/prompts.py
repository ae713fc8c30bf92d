"""The instruction shown to every model, and the chat messages built from it."""

from __future__ import annotations

DEFAULT_INSTRUCTION = (
    "What breed is the pet in this image? Answer with exactly one breed from this list: {classes}."
)


def render_instruction(classes: list[str], template: str = DEFAULT_INSTRUCTION) -> str:
    """The instruction text naming every class, in the order given."""
    if "{classes}" not in template:
        raise ValueError(
            f"instruction template {template!r} has no '{{classes}}' placeholder; "
            "add it where the list of breeds should go"
        )
    return template.format(classes=", ".join(classes))


def build_messages(instruction: str, label: str | None = None, n_images: int = 1) -> list[dict]:
    """Chat messages in the Hugging Face multimodal format: images first, then the instruction."""
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": instruction}]
    messages = [{"role": "user", "content": content}]
    if label is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": label}]})
    return messages
