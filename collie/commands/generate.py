"""`collie generate MODEL_DIR PROMPT`: continue a prompt with a saved model (or peft adapters on
their base model, `--base` naming the base where the one they record is not here)."""

from __future__ import annotations

import argparse
import os

import torch

from collie import storage
from collie.commands.paths import check_model_dir
from collie.config import ConfigError
from collie.models.base import CollieModel, load_tokenizer
from collie.models.registry import spec_for
from collie.peft.adapter_files import is_adapter_dir
from collie.peft.convert import model_with_adapter
from collie.serve.limits import context_length

NAME = "generate"
HELP = "continue a prompt with a saved model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="an HF model directory, or LoRA adapters in peft's format")
    parser.add_argument("prompt")
    parser.add_argument("--base", metavar="DIR",
                        help="for adapters: their base model directory (default: the one they record)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=1.0, help="> 0; used when sampling")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (0: all); used when sampling")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1]; used when sampling")
    parser.add_argument("--seed", type=int, default=0)


def check_arguments(args: argparse.Namespace) -> None:
    """The decoding settings and the base's directory, before a model is loaded."""
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    if not args.temperature >= 0 or (args.sample and args.temperature == 0):  # `not >=` also refuses NaN
        raise ConfigError(f"--temperature: must be > 0 when sampling (>= 0 otherwise), got {args.temperature}")
    if args.top_k < 0:
        raise ConfigError(f"--top-k: must be >= 0 (0 keeps every token), got {args.top_k}")
    if not 0 < args.top_p <= 1:
        raise ConfigError(f"--top-p: must be in (0, 1], got {args.top_p}")
    if args.base is not None and not storage.is_url(args.base) and not os.path.isdir(args.base):
        raise FileNotFoundError(f"--base: base model directory not found: {args.base!r}")


def run(args: argparse.Namespace) -> str:
    check_arguments(args)
    check_model_dir(args.model_dir)
    model_dir = storage.local_copy(args.model_dir)
    if is_adapter_dir(model_dir):  # a PEFT run's export: its adapters or prompt on their base model
        model, base = model_with_adapter(model_dir, args.base and storage.local_copy(args.base))
        has_tokenizer = os.path.isfile(os.path.join(model_dir, "tokenizer_config.json"))
        tokenizer = load_tokenizer(model_dir if has_tokenizer else base)
    else:
        if args.base is not None:
            raise ConfigError(f"--base: {args.model_dir!r} is a whole model, not adapters; leave --base out")
        model = CollieModel.from_pretrained(model_dir)
        tokenizer = load_tokenizer(model_dir)
    model.eval()
    input_ids = torch.tensor([tokenizer(args.prompt)["input_ids"]])
    context = context_length(spec_for(model.config).dims(model.config), tokenizer, model)
    if input_ids.shape[1] + args.max_new_tokens > context:
        raise ConfigError(f"--max-new-tokens: {args.max_new_tokens} new tokens after the prompt's {input_ids.shape[1]} "
                          f"exceed the model's context of {context} positions; give at most "
                          f"{max(context - input_ids.shape[1], 0)}")
    sampling = {"generator": torch.Generator().manual_seed(args.seed)}
    if not isinstance(model, CollieModel):  # transformers' own class (collie.models.auto) seeds globally
        torch.manual_seed(args.seed)
        sampling = {"attention_mask": torch.ones_like(input_ids), "pad_token_id": tokenizer.eos_token_id}
    out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)
