"""`collie expand-vocab MODEL_DIR OUT_DIR --tokens-file F`: add tokens to a model's tokenizer and
grow its embedding and head to match."""

from __future__ import annotations

import argparse

from collie import storage
from collie.commands.paths import check_destination, check_model_dir, new_directory
from collie.data.records import read_text_file
from collie.models import hf_io
from collie.models.base import CollieModel, load_tokenizer
from collie.models.vocabulary import expand_vocabulary

NAME = "expand-vocab"
HELP = "add tokens to a model's tokenizer; grow its embedding and head"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model_dir", help="an HF model directory (with its tokenizer)")
    parser.add_argument("out_dir")
    parser.add_argument("--tokens-file", required=True, help="the tokens to add, one per line (UTF-8)")
    parser.add_argument("--special", action="store_true", help="add them as special tokens (never split)")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds (refused otherwise)")


def run(args: argparse.Namespace) -> str:
    check_model_dir(args.model_dir)
    check_destination(args.out_dir, args.overwrite)
    tokens = [line for line in read_text_file(args.tokens_file, "tokens file").split("\n") if line.strip()]
    source = storage.local_copy(args.model_dir)
    tokenizer = load_tokenizer(source)
    model = CollieModel.from_pretrained(source, dtype=hf_io.stored_dtype(source))
    before = len(tokenizer)
    added = expand_vocabulary(model, tokenizer, tokens, special=args.special)
    with new_directory(args.out_dir) as out:
        model.save_pretrained(out, tokenizer=tokenizer)
    return (f"added {added} of {len(tokens)} tokens ({len(tokens) - added} were already known): vocabulary "
            f"{before} → {len(tokenizer)}; wrote {args.out_dir}")
