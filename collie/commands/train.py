"""`collie train CONFIG.yaml [key=value …]`: train from a YAML config (also under torchrun); a
second run with the same output_dir resumes from its latest checkpoint."""

from __future__ import annotations

import argparse
import os
import socket

import torch.distributed as dist

from collie import storage
from collie.commands.paths import check_model_dir
from collie.config import CollieConfig, ConfigError
from collie.data import CollieDatasetForPreference, CollieDatasetForTraining
from collie.data.packing import PackedDataset
from collie.distributed.env import DistEnv, init_distributed
from collie.evaluate.configured import configured_evaluators
from collie.init_model import bundled_tokenizer_path, init_model
from collie.models.base import CollieModel, load_tokenizer
from collie.trainer import Trainer

NAME = "train"
HELP = "train from a YAML config; key=value overrides follow it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file (see examples/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value, dotted keys for nesting (optimizer.lr=1e-4)")


def run(args: argparse.Namespace) -> None:
    config = CollieConfig.load(args.config, args.overrides)
    config.validate()
    if not config.output_dir:
        raise ConfigError("output_dir: `collie train` needs an output directory")
    if not config.data.train_file:
        raise ConfigError("data.train_file: `collie train` needs a training file (.json or .jsonl)")
    if config.model:
        check_model_dir(config.model)
    env = init_distributed(config.dist_timeout_s)
    ensure_writable(config.output_dir)
    if not config.model:
        # From here on the seed checkpoint is the model (and what config.yaml records).
        config = config.replace(model=seed_checkpoint(config, env), init_shape=None)
    tokenizer = load_tokenizer(config.tokenizer or config.model, config.trust_remote_code)
    model = CollieModel.from_pretrained(config.model, config=config)
    if config.preference.loss:  # pairs of chosen and rejected completions
        train_ds = CollieDatasetForPreference(config.data.train_file, tokenizer, max_length=config.data.max_length)
    else:
        train_ds = CollieDatasetForTraining(config.data.train_file, tokenizer, max_length=config.data.max_length)
    if config.data.packing:
        train_ds = PackedDataset(train_ds, config.data.max_length)
    evaluators = configured_evaluators(model, config, tokenizer)
    if env.is_main:
        storage.write_text(os.path.join(config.output_dir, "config.yaml"), config.to_yaml())
    trainer = Trainer(model, config, train_dataset=train_ds, evaluators=evaluators, tokenizer=tokenizer)
    trainer.train()
    final = os.path.join(config.output_dir, "final")
    if trainer.already_trained and storage.isdir(final) and storage.listdir(final):
        return  # a finished run run again: train() said so, and its final/ stays as it is
    if not trainer.preempted:  # a preempted run resumes from its checkpoint instead
        trainer.save_model(final)


def seed_checkpoint(config: CollieConfig, env: DistEnv) -> str:
    """Random init written once (by rank 0) and loaded by every rank: all layouts start from
    bit-identical weights."""
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
