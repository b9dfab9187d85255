"""`collie eval MODEL_OR_CHECKPOINT cfg.yaml`: the config's evaluators on a saved model, under
any layout (torchrun works as for training); prints a table and writes the results as JSON."""

from __future__ import annotations

import json
import os

from collie import storage
from collie.config import CollieConfig, ConfigError
from collie.trainer.checkpoint import read_trainer_state


def run_eval(source: str, config_path: str, overrides: list[str], out: str) -> dict:
    from collie.cli import configured_evaluators
    from collie.distributed.env import init_distributed
    from collie.models.base import CollieModel, load_hf_config, load_tokenizer
    from collie.trainer import Trainer, checkpoint

    config = CollieConfig.load(config_path, overrides)
    config.validate()
    if not config.data.eval_file:
        raise ConfigError("data.eval_file: `collie eval` needs an evaluation file (.json or .jsonl)")
    source = storage.local_copy(source)
    is_checkpoint = os.path.isfile(os.path.join(source, checkpoint.TRAINER_STATE))
    if is_checkpoint and os.path.isfile(os.path.join(source, "adapters.json")):
        raise ConfigError(f"{source}: a PEFT run's checkpoint; evaluate its merged model "
                          "(collie convert CKPT --merge-lora --to-hf DIR) or its exported adapters' base")
    init_distributed(config.dist_timeout_s)
    config.init_shape = None
    tokenizer = load_tokenizer(config.tokenizer or source, config.trust_remote_code)
    if is_checkpoint:
        read_trainer_state(source)
        # The architecture from the checkpoint's config.json; the weights from its DCP files below.
        config.model_config, config.model = load_hf_config(source), None
        model = CollieModel.from_config(config)
    else:
        model = CollieModel.from_pretrained(source, config=config)
    evaluators = configured_evaluators(model, config, tokenizer)
    trainer = Trainer(model, config, evaluators=evaluators, tokenizer=tokenizer, monitors=[])
    if is_checkpoint:
        checkpoint.load_model_only(trainer, source)
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
