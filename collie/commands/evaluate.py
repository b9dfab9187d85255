"""`collie eval MODEL_OR_CHECKPOINT cfg.yaml`: the config's evaluators on a saved model, under
any layout (torchrun works as for training); prints a table and writes the results as JSON."""

from __future__ import annotations

import argparse
import json
import os

from collie import storage
from collie.commands.paths import check_model_dir, check_writable_file
from collie.config import CollieConfig, ConfigError
from collie.evaluate.configured import configured_evaluators
from collie.evaluate.results import evaluate_all, sample_lines
from collie.inference import add_preference_references, load_for_inference
from collie.peft.adapter_files import is_adapter_dir

NAME = "eval"
HELP = "run the config's evaluators on a model or checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an HF model directory or a collie checkpoint (…/checkpoints/step-N)")
    parser.add_argument("config", help="YAML file whose data.eval_file (and generation_samples) say what to run")
    parser.add_argument("overrides", nargs="*", help="key=value, as for train (e.g. tp_size=2)")
    parser.add_argument("--out", default="eval.json", help="where the results go (JSON; default eval.json)")


def run(args: argparse.Namespace) -> None:
    run_eval(args.model, args.config, args.overrides, args.out)


def run_eval(source: str, config_path: str, overrides: list[str], out: str) -> dict:
    config = CollieConfig.load(config_path, overrides)
    config.validate()
    if not config.data.eval_file:
        raise ConfigError("data.eval_file: `collie eval` needs an evaluation file (.json or .jsonl)")
    check_writable_file(out, "--out")
    check_model_dir(source)
    source = storage.local_copy(source)
    if is_adapter_dir(source):
        raise ConfigError(f"{source}: peft adapters; evaluate their merged model "
                          "(collie convert ADAPTERS --merge-lora --to-hf DIR)")
    loaded = load_for_inference(source, config, configured_evaluators)
    add_preference_references(loaded.evaluators, config)
    results = evaluate_all(loaded.evaluators)
    if loaded.is_main:
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        width = max(len(k) for k in numbers) if numbers else 0
        print(f"{'metric':<{width}}  value")
        for name, value in numbers.items():
            print(f"{name:<{width}}  {value:.6g}")
        for line in sample_lines(results):
            print(line)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"model": source, **results}, f, indent=2)
    return results
