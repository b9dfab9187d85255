"""A saved model made ready to run under the configured layout, for commands that do not train
(`collie eval`, `collie serve`): an HF directory, a collie checkpoint (its weights, any layout
it was written under), or peft adapters on their base model. It builds the runtime and applies
the layout itself; no optimizer, scheduler or Trainer is made."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional

import torch

from collie import storage
from collie.config import CollieConfig, ConfigError
from collie.data.preference import PreferenceCollator, WithReference
from collie.distributed.env import init_distributed
from collie.distributed.parallelize import parallelize, weights_source
from collie.distributed.runtime import build_runtime, model_facts
from collie.evaluate.evaluators import Evaluator
from collie.evaluate.preference import EvaluatorForPreference
from collie.models.base import CollieModel, load_hf_config, load_tokenizer
from collie.models.loss import IGNORE_INDEX
from collie.models.registry import spec_of
from collie.peft.adapter_files import is_adapter_dir
from collie.peft.convert import model_with_adapter
from collie.trainer import checkpoint, reference_pass


@dataclass
class LoadedModel:
    model: object  # runs forward(input_ids, attention_mask=, kv_cache=) on every rank of the layout
    forward_context: Callable[[], ContextManager]
    tokenizer: object
    hf_config: object
    world_size: int = 1
    is_main: bool = True
    evaluators: list[Evaluator] = field(default_factory=list)


def load_for_inference(source: str, config: CollieConfig, evaluators_for: Optional[Callable] = None,
                       base: Optional[str] = None) -> LoadedModel:
    """Every rank calls this. `evaluators_for(model, config, tokenizer)` builds evaluators, which
    are bound to the layout; `base`: the base model of adapters, where the one they record is not."""
    source = storage.local_copy(source)
    is_checkpoint = os.path.isfile(os.path.join(source, checkpoint.TRAINER_STATE))
    if is_checkpoint and os.path.isfile(os.path.join(source, "adapters.json")):
        raise ConfigError(f"{source}: a PEFT run's checkpoint; use its merged model "
                          "(collie convert CKPT --merge-lora --to-hf DIR)")
    env = init_distributed(config.dist_timeout_s)
    if is_adapter_dir(source):
        return _adapters(source, config, env.world_size, base)
    if base is not None:
        raise ConfigError(f"--base: {source!r} is a whole model, not adapters; leave --base out")
    # Nothing is trained: the pipeline schedule's micro-batch count only has to be valid. A copy:
    # the caller's config is left as it was.
    config = config.replace(init_shape=None,
                            gradient_accumulation_steps=max(config.gradient_accumulation_steps, config.pp_size))
    tokenizer = load_tokenizer(config.tokenizer or source, config.trust_remote_code)
    if is_checkpoint:
        checkpoint.read_trainer_state(source)
        # The architecture from the checkpoint's config.json; the weights from its DCP files below.
        config = config.replace(model_config=load_hf_config(source), model=None)
        model = CollieModel.from_config(config)
    else:
        model = CollieModel.from_pretrained(source, config=config)
    evaluators = evaluators_for(model, config, tokenizer) if evaluators_for else []
    spec, hf_config = spec_of(model), model.config
    runtime = build_runtime(config, model_facts(model, spec))
    parallel = parallelize(model, spec, config, runtime, weights_from=weights_source(model))
    if is_checkpoint:
        checkpoint.load_model_only(parallel.module, source)
    for evaluator in evaluators:
        evaluator.bind(parallel)
    return LoadedModel(parallel.eval_model, parallel.forward_context, tokenizer, hf_config,
                       world_size=env.world_size, is_main=env.is_main, evaluators=evaluators)


def _adapters(source: str, config: CollieConfig, world_size: int, base: Optional[str]) -> LoadedModel:
    if world_size > 1:
        raise ConfigError(f"{source}: peft adapters are served by one process; for a parallel layout merge them "
                          "first (collie convert ADAPTERS --merge-lora --to-hf DIR)")
    model, base = model_with_adapter(source, base and storage.local_copy(base))
    has_tokenizer = os.path.isfile(os.path.join(source, "tokenizer_config.json"))
    tokenizer = load_tokenizer(config.tokenizer or (source if has_tokenizer else base), config.trust_remote_code)
    model.eval()
    return LoadedModel(model, contextlib.nullcontext, tokenizer, model.config)


def add_preference_references(evaluators: list[Evaluator], config: CollieConfig) -> None:
    """`collie eval` of a preference run: each preference evaluator's pairs get the reference
    log-probabilities that training computed (`output_dir/reference/`, when the data and
    `config.model` are unchanged) or one pass of `config.model`, the model training started from."""
    pending = [(index, evaluator) for index, evaluator in enumerate(evaluators)
               if isinstance(evaluator, EvaluatorForPreference) and evaluator.loss.needs_reference]
    if not pending:
        return
    if not config.model:
        raise ConfigError(f"model: {pending[0][1].loss.loss} compares with the model training started from; set "
                          "model= to it (the run's config.yaml records it)")
    reference: list[LoadedModel] = []  # loaded on the first pass that has no cache to read

    def scored_by_reference(index: int) -> torch.Tensor:
        if not reference:
            reference.append(load_for_inference(config.model, config, lambda model, cfg, tokenizer: [
                EvaluatorForPreference(model, cfg, evaluator.dataset, evaluator.loss) for _, evaluator in pending]))
        scorer = reference[0].evaluators[[i for i, _ in pending].index(index)]
        return reference_pass.compute(scorer.model, scorer.dataset, PreferenceCollator(scorer.collate_fn),
                                      config.eval_batch_size, scorer.runtime, scorer.forward_context, IGNORE_INDEX)

    for index, evaluator in pending:
        logps = reference_pass.cached_or_computed(f"eval-{index}", evaluator.dataset, config, config.model,
                                                  lambda: scored_by_reference(index), evaluator.runtime.is_main)
        evaluator.dataset = WithReference(evaluator.dataset, logps)
