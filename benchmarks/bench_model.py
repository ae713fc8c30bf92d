"""Random-weight Gemma 4 models at the real 31B widths, and the data the benchmarks feed them.

No real checkpoint can be fetched on the GPU machine, so the benchmarks build one: Gemma 4 31B's layer
widths (text hidden 5376, 32 heads, 16 KV heads of 256 on sliding layers and 4 of 512 on global ones,
`attention_k_eq_v`, MLP 21504, vocabulary 262,144; vision 1152 wide, patch 16, pooling 3) with as many
layers as asked. The tokenizer is the project's offline one (tiny_models) with whole-word merges for the
prompt's words, so a prompt is about as long in tokens as with the real vocabulary; the processor is the
project's, with the real patch size.

Build a checkpoint folder (what `python -m petqlora.train.train_adapter` loads), e.g. 4 text + 2 vision layers:

    python benchmarks/bench_model.py --out /tmp/gemma4-31b-4layers --text-layers 4 --vision-layers 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from unittest import mock

import torch

from petqlora.gemma import tiny_models
from petqlora.gemma.processors import Gemma4ImageTextProcessor

# The 37 Oxford-IIIT Pet breeds as prepare_data names them (lower case, spaces).
OXFORD_CLASSES = [
    "abyssinian", "american bulldog", "american pit bull terrier", "basset hound", "beagle", "bengal", "birman",
    "bombay", "boxer", "british shorthair", "chihuahua", "egyptian mau", "english cocker spaniel",
    "english setter", "german shorthaired", "great pyrenees", "havanese", "japanese chin", "keeshond",
    "leonberger", "maine coon", "miniature pinscher", "newfoundland", "persian", "pomeranian", "pug", "ragdoll",
    "russian blue", "saint bernard", "samoyed", "scottish terrier", "shiba inu", "siamese", "sphynx",
    "staffordshire bull terrier", "wheaten terrier", "yorkshire terrier",
]
_PROMPT_WORDS = "What breed is the pet in this image Answer with exactly one from list".split()


def build_tokenizer(family: str = "gemma4"):
    """tiny_models' tokenizer and template (Gemma 4 31B's, or Gemma 3's), plus whole-word merges for the
    breeds and the prompt."""
    words = {w for name in OXFORD_CLASSES for w in name.split()} | set(_PROMPT_WORDS)
    # Inside the prompt a word follows a space ("▁"); an answer's first word does not. "▁" forms first:
    # BPE applies merges by rank, and only their chains are free of each other's pairs.
    extra = sorted("▁" + w for w in words) + sorted({name.split()[0] for name in OXFORD_CLASSES} | {"What"})
    merge_words = tiny_models.MERGE_WORDS + [w for w in extra if w not in tiny_models.MERGE_WORDS]
    template = (tiny_models.GEMMA4_TEMPLATE.replace("{THOUGHT}", "<|channel>thought\n<channel|>")
                if family == "gemma4" else tiny_models._GEMMA3_TEMPLATE)
    build_vocab = tiny_models.vocab_and_merges

    def first_merges_only(specials):
        # Words share pairs ("t","h"); a repeated merge would take the later, lower rank and split words.
        vocab, merges = build_vocab(specials)
        return vocab, list(dict.fromkeys(merges))

    with mock.patch.object(tiny_models, "MERGE_WORDS", merge_words), \
            mock.patch.object(tiny_models, "vocab_and_merges", first_merges_only):
        return tiny_models.build_tokenizer(family, template)


def build_processor(max_soft_tokens: int = 280):
    from transformers import Gemma4ImageProcessorPil

    tok = build_tokenizer()
    image_processor = Gemma4ImageProcessorPil(patch_size=16, max_soft_tokens=max_soft_tokens, pooling_kernel_size=3)
    return Gemma4ImageTextProcessor(image_processor, tok, chat_template=tok.chat_template)


def build_gemma3_processor():
    """Gemma 3's processor at the real image size (896 px, patch 14, 256 soft tokens per image)."""
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    tok = build_tokenizer("gemma3")
    image_processor = Gemma3ImageProcessorPil(size={"height": 896, "width": 896})
    return Gemma3Processor(image_processor, tok, chat_template=tok.chat_template, image_seq_length=256)


def gemma3_27b_config(tok, text_layers: int = 62, vision_layers: int = 27, widths: str = "31b"):
    """Gemma 3 27B's config (text hidden 5376, 32 heads, 16 KV heads of 128, MLP 21504, 5 sliding layers of
    1024 to 1 global; SigLIP 1152 wide, patch 14 at 896 px) with as many layers as asked; `narrow` shrinks
    the widths (not the vocabulary) to try the scripts on a CPU."""
    from transformers import Gemma3Config, Gemma3TextConfig, SiglipVisionConfig

    narrow = widths == "narrow"
    text = Gemma3TextConfig(
        vocab_size=262_208, hidden_size=256 if narrow else 5376, intermediate_size=512 if narrow else 21504,
        num_hidden_layers=text_layers, num_attention_heads=4 if narrow else 32, num_key_value_heads=2 if narrow else 16,
        head_dim=64 if narrow else 128, query_pre_attn_scalar=64 if narrow else 168, sliding_window=1024,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        max_position_embeddings=131_072, final_logit_softcapping=None, pad_token_id=0,
        eos_token_id=[1, tok.convert_tokens_to_ids("<end_of_turn>")], bos_token_id=2)
    vision = SiglipVisionConfig(hidden_size=64 if narrow else 1152, intermediate_size=128 if narrow else 4304,
                                num_hidden_layers=vision_layers, num_attention_heads=2 if narrow else 16,
                                image_size=896, patch_size=14, vision_use_head=False)
    return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=256,
                        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
                        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
                        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"))


# Narrow widths (same structure, real vocabulary) for trying the benchmark scripts on a CPU.
_WIDTHS = {
    "31b": dict(hidden=5376, mlp=21504, heads=32, kv=16, head_dim=256, global_head_dim=512, global_kv=4,
                v_hidden=1152, v_mlp=4304, v_heads=16, v_head_dim=72),
    "narrow": dict(hidden=256, mlp=512, heads=4, kv=2, head_dim=64, global_head_dim=128, global_kv=1,
                   v_hidden=64, v_mlp=128, v_heads=2, v_head_dim=32),
}


def gemma4_31b_config(tok, text_layers: int = 60, vision_layers: int = 27, widths: str = "31b"):
    """Gemma 4 31B's config with `text_layers` decoder and `vision_layers` vision layers."""
    w = _WIDTHS[widths]
    from transformers import Gemma4Config, Gemma4TextConfig, Gemma4VisionConfig

    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           [("boi", "<|image>"), ("eoi", "<image|>"), ("image", "<|image|>"), ("video", "<|video|>"),
            ("boa", "<|audio>"), ("eoa", "<audio|>"), ("audio", "<|audio|>")]}
    # Five sliding-window layers, then one global, as in the 31B; the config makes the last one global.
    layer_types = ["full_attention" if i % 6 == 5 else "sliding_attention" for i in range(text_layers)]
    text = Gemma4TextConfig(
        vocab_size=262_144, hidden_size=w["hidden"], intermediate_size=w["mlp"], num_hidden_layers=text_layers,
        num_attention_heads=w["heads"], num_key_value_heads=w["kv"], head_dim=w["head_dim"],
        global_head_dim=w["global_head_dim"], num_global_key_value_heads=w["global_kv"], attention_k_eq_v=True, hidden_size_per_layer_input=0,
        sliding_window=1024, layer_types=layer_types, final_logit_softcapping=30.0,
        pad_token_id=0, eos_token_id=[1, tok.convert_tokens_to_ids("<turn|>")], bos_token_id=2)
    vision = Gemma4VisionConfig(
        hidden_size=w["v_hidden"], intermediate_size=w["v_mlp"], num_hidden_layers=vision_layers,
        num_attention_heads=w["v_heads"], num_key_value_heads=w["v_heads"], head_dim=w["v_head_dim"], patch_size=16, pooling_kernel_size=3,
        use_clipped_linears=False, standardize=True)
    return Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None, boi_token_id=ids["boi"],
        eoi_token_id=ids["eoi"], image_token_id=ids["image"], video_token_id=ids["video"],
        boa_token_id=ids["boa"], eoa_token_index=ids["eoa"], audio_token_id=ids["audio"])


def build_model(config, device: str = "cuda", seed: int = 0, quantize: bool = True):
    """Random bf16 weights built on `device` (seconds at 31B on a GPU), then NF4 like load_model's.

    Returns (model, parameter count before quantization). The same seed gives the same weights.
    """
    from transformers import Gemma3ForConditionalGeneration, Gemma4ForConditionalGeneration

    from petqlora.gemma.modeling import quantize_linears_4bit

    torch.manual_seed(seed)
    cls = Gemma3ForConditionalGeneration if config.model_type == "gemma3" else Gemma4ForConditionalGeneration
    with torch.device(device):
        model = cls._from_config(config, dtype=torch.bfloat16)
        if config.model_type == "gemma3":  # initialised to zeros: a random model would see no image
            with torch.no_grad():
                model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, 0.02)
    n_params = sum(p.numel() for p in model.parameters())
    if quantize:
        quantize_linears_4bit(model)
    model.generation_config.do_sample = False
    return model, n_params


def save_checkpoint_folder(out: str | Path, text_layers: int, vision_layers: int, device: str,
                           widths: str = "31b") -> dict:
    """A save_pretrained folder (bf16 weights + processor), loadable by petqlora.gemma.modeling.load_model."""
    started = time.perf_counter()
    processor = build_processor()
    config = gemma4_31b_config(processor.tokenizer, text_layers, vision_layers, widths)
    model, n_params = build_model(config, device=device, quantize=False)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return {"path": str(out), "parameters": n_params, "text_layers": text_layers, "vision_layers": vision_layers,
            "seconds": time.perf_counter() - started}


RESULTS = "benchmarks/results"


def add_out_arguments(parser, tag: str) -> None:
    """Where a run's results go: `<out>/<tag>/`, one folder per run (see run_folder)."""
    parser.add_argument("--out", default=RESULTS, help="the results root; this run writes into <out>/<tag>/")
    parser.add_argument("--tag", default=tag, help="the run's name: its folder under --out")


def run_folder(out: str | Path, tag: str) -> Path:
    """`<out>/<tag>/`, created: a run's JSON goes there, and run_h200.sh puts the run's log beside it."""
    folder = Path(out) / tag
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def add_model_arguments(parser, tag: str = "h200_31b") -> None:
    """The flags every benchmark shares: where results go and which model to build."""
    add_out_arguments(parser, tag)
    parser.add_argument("--text-layers", type=int, default=60)
    parser.add_argument("--vision-layers", type=int, default=27)
    parser.add_argument("--widths", default="31b")


def oxford_instruction() -> str:
    from petqlora.gemma.prompts import render_instruction

    return render_instruction(OXFORD_CLASSES)


def synthetic_dataset(root: str | Path, per_class: int = 14) -> Path:
    """The project's synthetic pets (6 Oxford breeds, varied aspect ratios), prepared like real data."""
    from petqlora.data.prepare_data import PrepareDataConfig, prepare_data
    from petqlora.data.synthetic import generate_synthetic_pets

    root = Path(root)
    source = generate_synthetic_pets(root / "source", per_class=per_class, seed=0)
    out = root / "dataset"
    prepare_data(PrepareDataConfig(source=str(source)), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--text-layers", type=int, default=4)
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--widths", default="31b", choices=sorted(_WIDTHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(save_checkpoint_folder(args.out, args.text_layers, args.vision_layers, args.device, args.widths))


if __name__ == "__main__":
    main()

