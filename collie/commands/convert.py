"""`collie convert SOURCE --to-hf DIR | --to-dcp DIR [--merge-lora]`: a DCP training checkpoint as
an HF directory, an HF directory as a model-only DCP checkpoint, or LoRA adapters folded into
their base model."""

from __future__ import annotations

import argparse

from collie import storage
from collie.commands.paths import check_destination, new_directory
from collie.config import ConfigError
from collie.convert import dcp_to_hf, hf_to_dcp
from collie.peft.convert import merge_lora
from collie.trainer.checkpoint import TRAINER_STATE

NAME = "convert"
HELP = "DCP checkpoint → HF directory, or HF → DCP (model only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a checkpoint directory (…/checkpoints/step-N) or an HF model directory")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-hf", metavar="OUT_DIR", help="write an HF-format model from a DCP checkpoint")
    target.add_argument("--to-dcp", metavar="OUT_DIR", help="write a model-only DCP checkpoint from an HF dir")
    parser.add_argument("--merge-lora", action="store_true",
                        help="with --to-hf: fold LoRA adapters (a peft adapter dir or a LoRA run's checkpoint) into "
                             "their base model")
    parser.add_argument("--base", help="the adapters' base model directory (default: the one they record)")
    parser.add_argument("--overwrite", action="store_true", help="replace what OUT_DIR holds (refused otherwise)")


def run(args: argparse.Namespace) -> str:
    if (args.merge_lora or args.base) and (not args.to_hf or not args.merge_lora):
        raise ConfigError("--merge-lora: use it with --to-hf (and --base only with --merge-lora)")
    destination = args.to_hf or args.to_dcp
    if not storage.is_url(args.source) and not storage.isdir(args.source):
        raise FileNotFoundError(f"{args.source}: {'a file' if storage.isfile(args.source) else 'not found'}; give a "
                                "checkpoint directory (…/checkpoints/step-N) or an HF model directory")
    check_destination(destination, args.overwrite)
    # Object-store sources are read from a local copy; the output appears only once complete.
    source = storage.local_copy(args.source)
    with new_directory(destination, last=("config.json", TRAINER_STATE)) as out:
        if args.merge_lora:
            merge_lora(source, out, args.base and storage.local_copy(args.base))
        elif args.to_hf:
            dcp_to_hf(source, out)
        else:
            hf_to_dcp(source, out)
    return f"wrote {destination}"
