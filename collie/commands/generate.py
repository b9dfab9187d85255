"""`collie generate MODEL_DIR PROMPT`: continue a prompt with a saved model (or peft adapters on
their base model)."""

from __future__ import annotations

import argparse
import os

import torch

from collie import storage
from collie.models.base import CollieModel, load_tokenizer
from collie.peft.adapter_files import is_adapter_dir
from collie.peft.convert import model_with_adapter

NAME = "generate"
HELP = "continue a prompt with a saved model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="an HF model directory, or LoRA adapters in peft's format")
    parser.add_argument("prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> str:
    model_dir = storage.local_copy(args.model_dir)
    if is_adapter_dir(model_dir):  # a PEFT run's export: its adapters or prompt on their base model
        model, base = model_with_adapter(model_dir)
        has_tokenizer = os.path.isfile(os.path.join(model_dir, "tokenizer_config.json"))
        tokenizer = load_tokenizer(model_dir if has_tokenizer else base)
    else:
        model = CollieModel.from_pretrained(model_dir)
        tokenizer = load_tokenizer(model_dir)
    model.eval()
    input_ids = torch.tensor([tokenizer(args.prompt)["input_ids"]])
    sampling = {"generator": torch.Generator().manual_seed(args.seed)}
    if not isinstance(model, CollieModel):  # transformers' own class (collie.models.auto) seeds globally
        torch.manual_seed(args.seed)
        sampling = {"attention_mask": torch.ones_like(input_ids), "pad_token_id": tokenizer.eos_token_id}
    out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)
