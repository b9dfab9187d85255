"""`collie train | eval | serve | init-model | generate | convert` (also `python -m collie …`, also under torchrun)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from typing import Optional

import torch

from collie import storage
from collie.config import CollieConfig, ConfigError
from collie.dtypes import DTYPES
from collie.data.records import DataError
from collie.distributed.peer_failure import PeerFailure
from collie.trainer.checkpoint import TRAINER_STATE, CheckpointError


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="collie", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a YAML config; key=value overrides follow it")
    train.add_argument("config", help="YAML file (see examples/quickstart.yaml)")
    train.add_argument("overrides", nargs="*", help="key=value, dotted keys for nesting (optimizer.lr=1e-4)")

    init = commands.add_parser("init-model", help="write a random-initialised HF model directory")
    init.add_argument("--shape", required=True, help="tiny | 20m | 100m | 1b | 7b")
    init.add_argument("out_dir")
    init.add_argument("--tokenizer", help="tokenizer directory (default: collie's bundled 4k BPE)")
    init.add_argument("--seed", type=int, default=0)
    init.add_argument("--dtype", default="float32", choices=list(DTYPES))
    init.add_argument("--family", default=None, help="model family (default: llama), e.g. internlm2")

    evaluate = commands.add_parser("eval", help="run the config's evaluators on a model or checkpoint")
    evaluate.add_argument("model", help="an HF model directory or a collie checkpoint (…/checkpoints/step-N)")
    evaluate.add_argument("config", help="YAML file whose data.eval_file (and generation_samples) say what to run")
    evaluate.add_argument("overrides", nargs="*", help="key=value, as for train (e.g. tp_size=2)")
    evaluate.add_argument("--out", default="eval.json", help="where the results go (JSON; default eval.json)")

    gen = commands.add_parser("generate", help="continue a prompt with a saved model")
    gen.add_argument("model_dir", help="an HF model directory, or LoRA adapters in peft's format")
    gen.add_argument("prompt")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)

    from collie.serve.command import add_arguments as serve_arguments

    serve_arguments(commands.add_parser("serve", help="an OpenAI-compatible HTTP server for a model"))

    expand = commands.add_parser("expand-vocab", help="add tokens to a model's tokenizer; grow its embedding and head")
    expand.add_argument("model_dir", help="an HF model directory (with its tokenizer)")
    expand.add_argument("out_dir")
    expand.add_argument("--tokens-file", required=True, help="the tokens to add, one per line (UTF-8)")
    expand.add_argument("--special", action="store_true", help="add them as special tokens (never split)")

    conv = commands.add_parser("convert", help="DCP checkpoint → HF directory, or HF → DCP (model only)")
    conv.add_argument("source", help="a checkpoint directory (…/checkpoints/step-N) or an HF model directory")
    target = conv.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-hf", metavar="OUT_DIR", help="write an HF-format model from a DCP checkpoint")
    target.add_argument("--to-dcp", metavar="OUT_DIR", help="write a model-only DCP checkpoint from an HF dir")
    conv.add_argument("--merge-lora", action="store_true",
                      help="with --to-hf: fold LoRA adapters (a peft adapter dir or a LoRA run's checkpoint) into "
                           "their base model")
    conv.add_argument("--base", help="the adapters' base model directory (default: the one they record)")

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "train":
            run_train(args.config, args.overrides)
        elif args.command == "eval":
            from collie.evaluate.command import run_eval

            run_eval(args.model, args.config, args.overrides, args.out)
        elif args.command == "serve":
            from collie.serve.command import run_serve

            run_serve(args)
        elif args.command == "init-model":
            from collie.init_model import init_model

            init_model(args.shape, args.out_dir, args.tokenizer, args.seed, DTYPES[args.dtype], family=args.family)
            print(f"wrote a random {args.shape} model to {args.out_dir}")
        elif args.command == "expand-vocab":
            print(run_expand_vocab(args))
        elif args.command == "convert":
            from collie.convert import dcp_to_hf, hf_to_dcp

            if (args.merge_lora or args.base) and (not args.to_hf or not args.merge_lora):
                raise ConfigError("--merge-lora: use it with --to-hf (and --base only with --merge-lora)")
            # Object-store sources are read from a local copy; destinations are uploaded when complete.
            source = storage.local_copy(args.source)
            with storage.staged(args.to_hf or args.to_dcp, last=("config.json", TRAINER_STATE)) as out:
                if args.merge_lora:
                    from collie.peft.convert import merge_lora

                    merge_lora(source, out, args.base and storage.local_copy(args.base))
                elif args.to_hf:
                    dcp_to_hf(source, out)
                else:
                    hf_to_dcp(source, out)
            print(f"wrote {args.to_hf or args.to_dcp}")
        else:
            print(run_generate(args))
    except (ConfigError, DataError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"collie: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a permission error while writing an export
        print(f"collie: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", file=sys.stderr)
        return 1
    except (FloatingPointError, PeerFailure) as e:
        print(f"collie: error: {e}", file=sys.stderr)
        return 1
    return 0


def run_train(config_path: str, overrides: list[str]) -> None:
    from collie.data import CollieDatasetForTraining
    from collie.distributed.env import init_distributed
    from collie.models.base import CollieModel, load_tokenizer
    from collie.trainer import Trainer

    config = CollieConfig.load(config_path, overrides)
    config.validate()
    if not config.output_dir:
        raise ConfigError("output_dir: `collie train` needs an output directory")
    if not config.data.train_file:
        raise ConfigError("data.train_file: `collie train` needs a training file (.json or .jsonl)")
    env = init_distributed(config.dist_timeout_s)
    ensure_writable(config.output_dir)
    if not config.model:
        # From here on the seed checkpoint is the model (and what config.yaml records).
        config.model, config.init_shape = seed_checkpoint(config, env), None
    model_dir = config.model
    tokenizer = load_tokenizer(config.tokenizer or model_dir, config.trust_remote_code)
    model = CollieModel.from_pretrained(model_dir, config=config)
    train_ds = CollieDatasetForTraining(config.data.train_file, tokenizer, max_length=config.data.max_length)
    if config.data.packing:
        from collie.data.packing import PackedDataset

        train_ds = PackedDataset(train_ds, config.data.max_length)
    evaluators = configured_evaluators(model, config, tokenizer)
    if env.is_main:
        storage.write_text(os.path.join(config.output_dir, "config.yaml"), config.to_yaml())
    trainer = Trainer(model, config, train_dataset=train_ds, evaluators=evaluators, tokenizer=tokenizer)
    trainer.train()
    if not trainer.preempted:  # a preempted run resumes from its checkpoint instead
        trainer.save_model(os.path.join(config.output_dir, "final"))


def configured_evaluators(model, config: CollieConfig, tokenizer) -> list:
    """Perplexity on data.eval_file, and greedy generation of its first data.generation_samples
    input/output records (exact match)."""
    from collie.data import CollieDatasetForGeneration, CollieDatasetForTraining
    from collie.data.datasets import generation_records
    from collie.evaluate import DecodeMetric, EvaluatorForGeneration, EvaluatorForPerplexity, PPLMetric

    if not config.data.eval_file:
        return []
    eval_ds = CollieDatasetForTraining(config.data.eval_file, tokenizer, max_length=config.data.max_length)
    evaluators = [EvaluatorForPerplexity(model, config, eval_ds, {"ppl": PPLMetric()})]
    if config.data.generation_samples:
        prompts = CollieDatasetForGeneration(generation_records(eval_ds, config.data.generation_samples),
                                             tokenizer, max_length=config.data.max_length)
        evaluators.append(EvaluatorForGeneration(model, config, prompts, {"decode": DecodeMetric()},
                                                 max_new_tokens=config.data.max_new_tokens))
    return evaluators


def seed_checkpoint(config: CollieConfig, env) -> str:
    """Random init written once (by rank 0) and loaded by every rank: all layouts start from
    bit-identical weights."""
    import torch.distributed as dist

    from collie.init_model import bundled_tokenizer_path, init_model

    if config.init_shape is None:
        raise ConfigError("model: set `model` (an HF directory) or `init_shape` (tiny/20m/100m/1b/7b)")
    path = os.path.join(config.output_dir, "init")
    if env.is_main and not storage.isfile(os.path.join(path, "config.json")):
        with storage.staged(path) as local:
            init_model(config.init_shape, local, config.tokenizer or bundled_tokenizer_path(), config.seed,
                       init_method=config.init_method)
    if dist.is_initialized():
        dist.barrier()
    return path


def ensure_writable(path: str) -> None:
    try:
        storage.makedirs(path)
        # One probe file per process: ranks check the same directory at the same time.
        probe = os.path.join(path, f".write-test-{socket.gethostname()}-{os.getpid()}")
        storage.write_text(probe, "")
        storage.remove_file(probe)
    except OSError as e:
        raise ConfigError(f"output_dir: {path!r} is not writable ({e.strerror or e})") from None


def run_expand_vocab(args) -> str:
    from collie.models import hf_io
    from collie.models.base import CollieModel, load_tokenizer
    from collie.models.vocabulary import expand_vocabulary

    with open(args.tokens_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f if line.strip()]
    source = storage.local_copy(args.model_dir)
    tokenizer = load_tokenizer(source)
    model = CollieModel.from_pretrained(source, dtype=hf_io.stored_dtype(source))
    before = len(tokenizer)
    added = expand_vocabulary(model, tokenizer, tokens, special=args.special)
    with storage.staged(args.out_dir) as out:
        model.save_pretrained(out, tokenizer=tokenizer)
    return (f"added {added} of {len(tokens)} tokens ({len(tokens) - added} were already known): vocabulary "
            f"{before} → {len(tokenizer)}; wrote {args.out_dir}")


def run_generate(args) -> str:
    from collie.models.base import CollieModel, load_tokenizer
    from collie.peft.adapter_files import is_adapter_dir

    reserved = 0
    args.model_dir = storage.local_copy(args.model_dir)
    if is_adapter_dir(args.model_dir):  # a PEFT run's export: its adapters or prompt on their base model
        from collie.peft.convert import model_with_adapter

        model, base, reserved = model_with_adapter(args.model_dir)
        has_tokenizer = os.path.isfile(os.path.join(args.model_dir, "tokenizer_config.json"))
        tokenizer = load_tokenizer(args.model_dir if has_tokenizer else base)
    else:
        model = CollieModel.from_pretrained(args.model_dir)
        tokenizer = load_tokenizer(args.model_dir)
    model.eval()
    # Prompt tuning: positions before the text for the trained prompt.
    input_ids = torch.tensor([[tokenizer.pad_token_id or 0] * reserved + tokenizer(args.prompt)["input_ids"]])
    sampling = {"generator": torch.Generator().manual_seed(args.seed)}
    if not isinstance(model, CollieModel):  # transformers' own class (collie.models.auto) seeds globally
        torch.manual_seed(args.seed)
        sampling = {"attention_mask": torch.ones_like(input_ids), "pad_token_id": tokenizer.eos_token_id}
    out = model.generate(input_ids, max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                         eos_token_id=tokenizer.eos_token_id, **sampling)
    return tokenizer.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True)


if __name__ == "__main__":
    sys.exit(main())
