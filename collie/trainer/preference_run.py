"""What makes a Trainer's run preference training: the pair collate, the step objective, and
where the reference log-probabilities come from (`preference.reference`):

- `precomputed`: one pass of the initial model over the pairs before training
  (`collie.trainer.reference_pass`, cached in output_dir), so only one model is in memory;
- `model`: each step, a frozen copy of the initial model — or, under LoRA, the model being
  trained with its adapters off, which needs no copy at all;
- `none`: SimPO and ORPO compare the policy with nothing.

Preference evaluators' pairs get their reference from the same source, before the first
evaluation.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, ContextManager, Optional

import torch

from collie.config import CollieConfig, ConfigError
from collie.config.peft_settings import LoraSettings, peft_settings
from collie.config.preference_settings import PreferenceSettings, preference_settings
from collie.data.preference import PreferenceCollator, WithReference
from collie.distributed.parallel_model import ParallelModel
from collie.distributed.parallelize import parallelize, weights_source
from collie.distributed.preference_step import PreferenceObjective
from collie.evaluate.preference import EvaluatorForPreference
from collie.models.loss import IGNORE_INDEX
from collie.peft import adapters_disabled
from collie.preference import PreferenceLoss
from collie.trainer import reference_pass

log = logging.getLogger("collie")


class PreferenceRun:
    def __init__(self, settings: PreferenceSettings, model: torch.nn.Module, config: CollieConfig) -> None:
        """`model`: the single-device model, before the layout is applied (a frozen copy is taken
        from it for `reference: model` without LoRA)."""
        self.settings, self.config = settings, config
        self.objective = PreferenceObjective(settings.loss, IGNORE_INDEX)
        self.lora = isinstance(peft_settings(config), LoraSettings)
        if settings.reference == "model" and not self.lora and peft_settings(config) is not None:
            raise ConfigError("preference.reference: `model` turns a LoRA run's adapters off for the reference; "
                             "with prompt tuning use `precomputed`")
        self._copy = None
        if settings.reference == "model" and not self.lora:
            self._copy = copy.deepcopy(model).requires_grad_(False)
        self.reference_model: Optional[torch.nn.Module] = None
        self._policy: Optional[ParallelModel] = None
        self._padder: Optional[Callable[[list[dict]], dict]] = None
        self._prepared = False

    @property
    def loss(self):
        return self.settings.loss

    def bind(self, parallel: ParallelModel, spec) -> None:
        """After the layout is applied to the model being trained: the frozen copy gets the same
        layout (weights loaded as the model's were)."""
        self._policy = parallel
        if self._copy is not None:
            reference = parallelize(self._copy, spec, self.config, parallel.runtime,
                                    weights_from=weights_source(self._copy), replicate_wrapper=False)
            self.reference_model, self._copy = reference.eval_model, None
            self.reference_model.eval()
        elif self.settings.reference == "model":
            self.reference_model = parallel.eval_model

    def collate(self, padder: Callable[[list[dict]], dict]) -> PreferenceCollator:
        """The training collate: pairs as rows padded by the layout's `padder`."""
        self._padder = padder
        return PreferenceCollator(padder)

    def _reference_off(self) -> ContextManager:
        """The context a reference forward runs in: LoRA's adapters off (reference: model)."""
        if self.settings.reference == "model" and self.lora:
            return adapters_disabled(self._policy.module)
        return contextlib.nullcontext()

    def add_step_reference(self, micro_batches: list[dict]) -> None:
        """`reference: model`: each micro-batch's reference log-probabilities, now."""
        if self.reference_model is None:
            return
        with self._reference_off():
            for batch in micro_batches:
                batch["reference_logps"] = reference_pass.reference_logps(
                    self.reference_model, batch, self._policy.forward_context, IGNORE_INDEX)

    def prepare(self, trainer) -> None:
        """Before the first step or evaluation, and before a checkpoint is loaded: the reference
        log-probabilities of the training pairs (precomputed) and of every preference
        evaluator's pairs, from the cache when data and model are unchanged."""
        if self._prepared or not self.loss.needs_reference:
            return
        self._prepared = True
        if self.settings.reference == "precomputed" and trainer.train_dataset is not None:
            trainer.train_dataset = self._with_reference("train", trainer.train_dataset, trainer)
        for index, evaluator in enumerate(trainer.evaluators):
            if isinstance(evaluator, EvaluatorForPreference) and evaluator.loss.needs_reference:
                evaluator.dataset = self._with_reference(f"eval-{index}", evaluator.dataset, trainer)

    def _with_reference(self, name: str, dataset, trainer) -> WithReference:
        def compute() -> torch.Tensor:
            with self._reference_off():
                return reference_pass.compute(self.reference_model or self._policy.eval_model, dataset,
                                              PreferenceCollator(self._padder), self.config.train_micro_batch_size,
                                              trainer.runtime, self._policy.forward_context, IGNORE_INDEX)

        model = "frozen" if self.settings.reference == "model" else "initial"
        return WithReference(dataset, reference_pass.cached_or_computed(name, dataset, self.config, trainer.base_model,
                                                                        compute, trainer.runtime.is_main, model))


def preference_run(config: CollieConfig, model: torch.nn.Module, loss_fn, train_fn, collate_fn) -> Optional[PreferenceRun]:
    """The run's preference training (`preference.loss`, or a `PreferenceLoss` as the Trainer's
    loss_fn), or None; the Trainer arguments that would replace its step are refused."""
    settings = preference_settings(config, loss_fn)
    if settings is None:
        return None
    if train_fn is not None:
        raise ConfigError("train_fn: a preference run's step is its pair loss (preference.loss); leave train_fn out")
    if loss_fn is not None and not isinstance(loss_fn, PreferenceLoss):
        raise ConfigError(f"loss_fn: preference.loss is the loss of a preference run; leave loss_fn out (got "
                          f"{type(loss_fn).__name__})")
    if collate_fn is not None:
        raise ConfigError("train_dataset_collate_fn: collie collates preference pairs itself (a pair's chosen and "
                          "rejected rows in one micro-batch); leave it out")
    return PreferenceRun(settings, model, config)
