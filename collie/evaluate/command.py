"""`collie eval MODEL_OR_CHECKPOINT cfg.yaml`: the config's evaluators on a saved model, under
any layout (torchrun works as for training); prints a table and writes the results as JSON."""

from __future__ import annotations

import json
import os

from collie import storage
from collie.config import CollieConfig, ConfigError


def run_eval(source: str, config_path: str, overrides: list[str], out: str) -> dict:
    from collie.cli import configured_evaluators
    from collie.inference import load_for_inference
    from collie.peft.adapter_files import is_adapter_dir

    config = CollieConfig.load(config_path, overrides)
    config.validate()
    if not config.data.eval_file:
        raise ConfigError("data.eval_file: `collie eval` needs an evaluation file (.json or .jsonl)")
    source = storage.local_copy(source)
    if is_adapter_dir(source):
        raise ConfigError(f"{source}: peft adapters; evaluate their merged model "
                          "(collie convert ADAPTERS --merge-lora --to-hf DIR)")
    loaded = load_for_inference(source, config,
                                lambda model, tokenizer: configured_evaluators(model, config, tokenizer))
    trainer = loaded.trainer
    results = {k: v for k, v in trainer.evaluate().items()}
    if trainer.runtime.is_main:
        numbers = {k: v for k, v in results.items() if isinstance(v, (int, float))}
        width = max(len(k) for k in numbers) if numbers else 0
        print(f"{'metric':<{width}}  value")
        for name, value in numbers.items():
            print(f"{name:<{width}}  {value:.6g}")
        for sample in results.get("samples", [])[:3]:
            print(f"  prompt: {sample['prompt']!r}\n  output: {sample['pred']!r}\n  target: {sample['target']!r}")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            json.dump({"model": source, **results}, f, indent=2)
    return results
