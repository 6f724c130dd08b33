"""Build a Llama-2-7B-shaped checkpoint with random weights, for timing real engines offline.

    python experiments/real_engine/build_random_llama.py --out /tmp/llama2-7b-random [--fp8]

Timing does not depend on weight values, so a random checkpoint of the right shape stands in for
Llama-2-7B where nothing can be downloaded. The tokenizer is a word-level one: token ``w<i>`` is id
``i``, so a prompt of N space-separated words is exactly N tokens (no approximation needed). EOS is
disabled in the generation config so output lengths are pinned by max_tokens. ``--fp8`` saves the
checkpoint quantized with transformers' FineGrainedFP8Config (FP8 weights and activations, 128x128
blocks), which transformers serve loads as a pre-quantized model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5)


def word_tokenizer_model(vocab_size: int):
    """The word-level tokenizer as a ``tokenizers.Tokenizer``: token ``w<i>`` is id ``i``, ids 0-2 are
    ``<unk>``, ``<s>``, ``</s>``. Any word outside the vocabulary (English words too) encodes to ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return tok


def word_tokenizer(vocab_size: int):
    from transformers import PreTrainedTokenizerFast

    # No token is registered as special: a random model may emit any id, and every emitted id must
    # decode to visible text, or a streaming client would see an empty chunk and miss a token.
    return PreTrainedTokenizerFast(tokenizer_object=word_tokenizer_model(vocab_size))


def _random_model(config, generation):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.generation_config = generation
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fp8", action="store_true")
    parser.add_argument("--source", type=Path, help="with --fp8: quantize this bf16 checkpoint instead of a new one")
    args = parser.parse_args()
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.time()
    config = LlamaConfig(**LLAMA2_7B, bos_token_id=1, eos_token_id=None, pad_token_id=0)
    generation = GenerationConfig(bos_token_id=1, eos_token_id=None, pad_token_id=0, do_sample=False)
    if args.fp8:
        from transformers import FineGrainedFP8Config

        source = args.source
        if source is None:
            source = args.out.with_name(args.out.name + ".bf16")
            _random_model(config, generation).save_pretrained(source)
            word_tokenizer(config.vocab_size).save_pretrained(source)
        model = LlamaForCausalLM.from_pretrained(source, quantization_config=FineGrainedFP8Config(), device_map="cuda")
        model.generation_config = generation
    else:
        model = _random_model(config, generation)
    model.save_pretrained(args.out)
    word_tokenizer(config.vocab_size).save_pretrained(args.out)
    info = {"shape": LLAMA2_7B, "dtype": "fp8-blockwise" if args.fp8 else "bfloat16", "seed": 0,
            "weights": "random (torch.manual_seed(0)); timing does not depend on values",
            "build_s": round(time.time() - started, 1)}
    (args.out / "qfleet_model_info.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
