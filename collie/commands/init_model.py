"""`collie init-model --shape SHAPE OUT_DIR`: a random-initialised model written as an HF directory."""

from __future__ import annotations

import argparse

from collie.commands.paths import check_destination, new_directory
from collie.dtypes import DTYPES
from collie.init_model import init_model

NAME = "init-model"
HELP = "write a random-initialised HF model directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shape", required=True, help="tiny | 20m | 100m | 1b | 7b")
    parser.add_argument("out_dir")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: collie's bundled 4k BPE)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--family", default=None, help="model family (default: llama), e.g. internlm2")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds (refused otherwise)")


def run(args: argparse.Namespace) -> str:
    check_destination(args.out_dir, args.overwrite)
    with new_directory(args.out_dir) as out:
        init_model(args.shape, out, args.tokenizer, args.seed, DTYPES[args.dtype], family=args.family)
    return f"wrote a random {args.shape} model to {args.out_dir}"
