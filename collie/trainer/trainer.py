"""The Trainer: a loop over global batches with events for callbacks, monitors and evaluators.

The optimizer decides how gradients are applied, through its step strategy
(`collie.trainer.step_strategy`): one that updates inside backward (LOMO, AdaLomo) or the usual
backward → clip → step → zero_grad. The Trainer is `Stateful` (`state_dict` /
`load_state_dict`): the checkpointer saves it as it saves the model and optimizer.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import TYPE_CHECKING, Callable, Optional, Union

import torch

from collie import storage
from collie.config import CollieConfig, ConfigError, checkpointing_mode
from collie.config.peft_settings import PromptSettings, peft_settings
from collie.config.quantization import quant_settings
from collie.data.sampler import GlobalBatchSampler
from collie.distributed.parallel_model import ParallelModel
from collie.distributed.parallelize import parallelize, weights_source
from collie.distributed.peer_failure import as_peer_failure
from collie.distributed.runtime import build_runtime, model_facts
from collie.distributed.steps import StepResult, default_loss
from collie.evaluate.evaluators import Evaluator, EvaluatorForPerplexity
from collie.evaluate.metrics import PPLMetric
from collie.evaluate.preference import EvaluatorForPreference
from collie.evaluate.results import evaluate_all, sample_lines
from collie.events import Callback, CallbackList
from collie.host_memory import for_training, return_freed_memory_to_os
from collie.models.base import model_source
from collie.models.loss import IGNORE_INDEX, GPTLMLoss
from collie.models.registry import spec_of
from collie.monitors.monitors import Monitor, StepStats, default_monitors
from collie.monitors.plot_sink import LossCurveSink
from collie.monitors.run_files import RunFiles
from collie.monitors.sinks import ConsoleSink, CSVSink, Sink, TensorBoardSink
from collie.monitors.wandb_sink import WandbSink
from collie.peft.adapter_files import write_checkpoint_record
from collie.peft.attach import PeftRun, attach_peft
from collie.tokenization import pad_token_id
from collie.trainer import checkpoint
from collie.trainer.background_checkpoint import BackgroundWriter
from collie.trainer.checkpoint_callbacks import CheckpointCallback
from collie.trainer.collie_arguments import (
    check_io_options,
    optimizer_for_peft,
    pipeline_loss,
    rebind_parameters,
    step_loss_fn,
    training_collate,
)
from collie.trainer.optim_factory import build_optimizer, build_scheduler, optimizer_class
from collie.trainer.preemption import PreemptionWatch
from collie.trainer.preference_run import preference_run
from collie.trainer.step_strategy import step_strategy, updates_in_backward

if TYPE_CHECKING:
    from collie.serve.providers import BaseProvider

log = logging.getLogger("collie")


class Trainer:
    def __init__(self, model: torch.nn.Module, config: CollieConfig, tokenizer=None,
                 loss_fn: Optional[Callable] = None, train_fn: Optional[Callable] = None,
                 eval_fn: Optional[Callable] = None, optimizer: Optional[torch.optim.Optimizer] = None,
                 lr_scheduler=None, train_dataset=None, eval_dataset=None,
                 callbacks: Union[Callback, list[Callback], None] = None,
                 train_dataset_collate_fn: Optional[Callable] = None, eval_dataset_collate_fn: Optional[Callable] = None,
                 server=None, monitors: Optional[list[Monitor]] = None, metrics: Optional[dict] = None,
                 evaluators: Optional[list[Evaluator]] = None, data_provider: Optional[BaseProvider] = None) -> None:
        """CoLLiE's arguments, in CoLLiE's order. `train_fn(trainer, batch, global_step)` returns a
        micro-batch's loss (collie runs backward and the step); `eval_dataset` is evaluated with
        `metrics` (perplexity when not given); `data_provider` (or a CoLLiE `Server` holding one)
        opens a page that answers from the weights being trained."""
        config.validate()
        return_freed_memory_to_os()
        self.config = config
        self.spec = spec_of(model)
        # The base model's directory, which PEFT files and checkpoints record.
        self.base_model = config.model or model_source(model)
        self.runtime = build_runtime(config, model_facts(model, self.spec),
                                     prompt_tuning=isinstance(peft_settings(config), PromptSettings),
                                     quantized=quant_settings(config.quantization_config) is not None)
        if train_fn is not None:
            self.runtime.layout.check_custom_step()
        provider = data_provider or getattr(server, "data_provider", None)
        # PEFT: adapters or a prompt go on the single-device model; parallelism then treats them
        # as any other parameters.
        self.peft: Optional[PeftRun] = attach_peft(model, self.spec, config)
        self.preference = preference_run(config, model, loss_fn, train_fn, train_dataset_collate_fn)
        self.callbacks = CallbackList(self._assemble_callbacks(callbacks, provider))
        self.callbacks.fire("on_setup_parallel_model", self)
        self.parallel = self._parallelize(model, optimizer)
        self.model = self.parallel.module
        if self.preference is not None:
            self.preference.bind(self.parallel, self.spec)
        if self.peft is not None:
            self.peft.initialise(self.model, config.seed)
        self.loss_fn = loss_fn or GPTLMLoss(IGNORE_INDEX)
        self._pipeline_loss = pipeline_loss(self.loss_fn, config.loss_chunk_tokens > 0) \
            if self.runtime.layout.pipelined and self.preference is None else None
        self.train_fn = step_loss_fn(train_fn) if train_fn is not None else None
        self.train_dataset = train_dataset
        self.tokenizer = tokenizer or getattr(train_dataset, "tokenizer", None) or getattr(provider, "tokenizer", None)
        side = "left" if getattr(train_dataset_collate_fn, "padding_side", None) == "left" else config.data.padding_side
        self.padder = training_collate(train_dataset_collate_fn, self.runtime.layout.pipelined) or \
            self.parallel.padder(pad_token_id(self.tokenizer), side, config.data.max_length)
        if self.preference is not None:
            self.padder = self.preference.collate(self.padder)
        self.sampler = None
        if train_dataset is not None:
            self.sampler = GlobalBatchSampler(len(train_dataset), config.train_micro_batch_size,
                                              config.gradient_accumulation_steps, self.runtime.dp_size,
                                              self.runtime.dp_rank, config.seed, shuffle=config.data.shuffle)
            left_out = len(train_dataset) % self.sampler.global_batch_size
            if left_out and self.runtime.is_main:
                log.info("%d of %d samples do not fill a last global batch of %d and sit out each epoch (%s)", left_out,
                         len(train_dataset), self.sampler.global_batch_size,
                         "different ones each epoch" if config.data.shuffle else "the last ones")
        self.total_steps = self._total_steps()
        self.optimizer = optimizer or build_optimizer(self.model, config.optimizer)
        if getattr(self.optimizer, "hessian_update_interval", 0):
            self.runtime.layout.check_whole_model_optimizer()
        self.step_strategy = step_strategy(self.optimizer, config.optimizer, self.parallel)
        # What checkpoints hold: the checkpointer sees these and nothing else of the Trainer.
        self.checkpointed = checkpoint.Checkpointed(self.model, self.step_strategy, self, self._describe_checkpoint,
                                                    adapters_only=self.peft is not None)
        self.lr_scheduler = lr_scheduler or build_scheduler(self.optimizer, config.scheduler, max(1, self.total_steps))
        self.monitors = default_monitors(config) if monitors is None else list(monitors)
        self.evaluators = list(evaluators or [])
        if eval_dataset is not None and self.preference is not None:
            self.evaluators.append(EvaluatorForPreference(self.model, config, eval_dataset, self.preference.loss,
                                                          metrics, eval_fn=eval_fn, collate_fn=eval_dataset_collate_fn))
        elif eval_dataset is not None:
            self.evaluators.append(EvaluatorForPerplexity(self.model, config, eval_dataset,
                                                          metrics or {"ppl": PPLMetric()}, eval_fn=eval_fn,
                                                          collate_fn=eval_dataset_collate_fn))
        for evaluator in self.evaluators:
            evaluator.bind(self.parallel)
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.should_stop = False
        # Set when a preemption signal stopped training after a checkpoint (`train` returned early).
        self.preempted = False
        # Set when train() found the run already at its last step (and trained nothing).
        self.already_trained = False
        self._preemption: Optional[PreemptionWatch] = None
        self._background = BackgroundWriter() if config.checkpoint_async else None
        # (step, path) of the last full checkpoint in output_dir: a preemption right after it reuses it.
        self._checkpointed: Optional[tuple[int, str]] = None
        self.sinks: list[Sink] = []
        self._flops_per_token: Optional[float] = None
        self.callbacks.fire("on_after_trainer_initialized", self)

    # -- assembly -----------------------------------------------------------
    def _assemble_callbacks(self, callbacks: Union[Callback, list[Callback], None],
                            provider: Optional[BaseProvider]) -> list[Callback]:
        """The caller's callbacks, then the ones the config asks for: periodic checkpoints and
        serving during training (`serve.port`, or CoLLiE's `data_provider`)."""
        config = self.config
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks or [])
        if config.checkpoint_every_n_steps:
            callbacks.append(CheckpointCallback(every_n_steps=config.checkpoint_every_n_steps,
                                                max_to_keep=config.max_to_keep))
        if config.serve.port is not None:
            # Imported here, not at the top: the serving stack (FastAPI, uvicorn, pydantic; 20 MB
            # resident) is for runs that serve, not a cost of every training process.
            from collie.serve.during_training import ServeCallback  # the serving stack (above)

            serve = config.serve
            callbacks.append(ServeCallback(serve.port, serve.host, serve.max_batch_size, serve.max_queue,
                                           gradio_port=serve.gradio_port))
        if provider is not None:
            if config.serve.port is not None:
                raise ConfigError("data_provider and serve.port: both serve during training; give one")
            callbacks.append(provider.serve_callback(config.serve))
        return callbacks

    def _parallelize(self, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer]) -> ParallelModel:
        """Apply the layout; point a user-built optimizer at the parameters it put in place."""
        names = {id(p): name for name, p in model.named_parameters()}
        in_backward = updates_in_backward(optimizer if optimizer is not None
                                          else optimizer_class(self.config.optimizer.name))
        if optimizer is not None and not in_backward and self.peft is not None:
            gained = optimizer_for_peft(optimizer, model)
            if gained and self.runtime.is_main:
                log.info("optimizer: built before the Trainer put PEFT on the model; it trains the %d PEFT "
                         "parameter(s) with its own settings, not the frozen base", gained)
        parallel = parallelize(model, self.spec, self.config, self.runtime,
                               weights_from=weights_source(model), replicate_wrapper=not in_backward)
        if optimizer is not None and not in_backward:
            rebind_parameters(optimizer, names, parallel.module.state_dict(keep_vars=True))
        return parallel

    # -- public API ---------------------------------------------------------
    def train(self, resume_from: Optional[str] = None) -> None:
        """Train (continuing from `resume_from`, or from output_dir's latest checkpoint)."""
        if resume_from is not None and not isinstance(resume_from, (str, os.PathLike)):
            raise TypeError("train: collie draws global batches from train_dataset itself; pass the dataset to "
                            f"the Trainer instead of a {type(resume_from).__name__}")
        if self.train_dataset is None:
            raise ValueError("train_dataset: the Trainer needs a training dataset to train")
        resume_from = resume_from or checkpoint.latest(self.config.output_dir)
        for_training(saves_memory=checkpointing_mode(self.config.checkpointing) != "none"
                     or self.step_strategy.updates_in_backward)
        self._prepare_reference()  # from the initial weights, before a checkpoint replaces them
        if resume_from:
            self.load_checkpoint(resume_from)
            total = self._total_steps()  # as the loop counts it (config.max_steps may have changed)
            if total and self.global_step >= total:
                # Training again would only rewrite this checkpoint (and the run's files) as they are.
                self.already_trained = True
                if self.runtime.is_main:
                    log.info("%s is at step %d of %d: the run is complete; nothing to do", resume_from,
                             self.global_step, total)
                return
            if self.runtime.is_main:
                log.info("resuming from %s (step %d of %d)", resume_from, self.global_step, total)
        self._open_sinks(resumed=bool(resume_from))
        self.callbacks.fire("on_train_begin", self)
        for monitor in self.monitors:
            monitor.start(self.runtime.device)
        failed = True
        try:
            with PreemptionWatch() as self._preemption:
                self._loop()
            failed = False
        finally:
            self._preemption = None
            for monitor in self.monitors:
                monitor.stop()
            self._close_sinks(failed)
            if failed:
                self._settle_background_checkpoint()
        if not self.preempted:
            self.callbacks.fire("on_train_end", self)
        self._complete_background_checkpoint(wait=True)  # train() returns with every checkpoint complete

    def eval(self, dataloader=None) -> dict:
        """CoLLiE's name: run every evaluator (their metrics merged into one dict)."""
        if dataloader is not None:
            raise TypeError("eval: each evaluator reads its own dataset; give it to the evaluator")
        return self.evaluate()

    def evaluate(self) -> dict:
        self._prepare_reference()
        self.callbacks.fire("on_evaluate_begin", self)
        results = evaluate_all(self.evaluators)
        for line in sample_lines(results):
            for sink in self.sinks:
                sink.message(line)
        self.callbacks.fire("on_evaluate_end", self, results)
        return results

    def save_model(self, path: str, process_exclusion: bool = False, **kwargs) -> None:
        """The model (and tokenizer) in Hugging Face format; a PEFT run writes its adapters or
        prompt in peft's format (`PeftModel.from_pretrained(base, path)` loads them)."""
        check_io_options(process_exclusion, kwargs)
        tokenizer = self.tokenizer if self.runtime.is_main else None
        # A local destination is written beside it first, so a full disk leaves no half model;
        # an object-store one is written locally and uploaded by rank 0 (config.json last).
        staging = path if storage.is_url(path) else storage.local_form(path).rstrip(os.sep) + ".tmp"
        if self.runtime.is_main and staging != path:
            storage.remove_tree(staging)  # left by an export that was killed
        self.runtime.barrier()
        try:
            with storage.staged(staging, upload=self.runtime.is_main) as local:
                if self.peft is None:
                    self.parallel.export(local, tokenizer)
                else:
                    self.peft.save(local, self.model, self.spec, self.runtime, base_model=self.base_model)
                    if tokenizer is not None:
                        tokenizer.save_pretrained(local)
        except BaseException as e:
            if staging == path:
                raise
            storage.remove_tree(staging)
            if not isinstance(e, OSError):
                raise
            # Name the file as it would have been called in `path`.
            named = str(e.filename or "")
            if named.startswith(staging + os.sep):
                named = os.path.join(path, os.path.relpath(named, staging))
            raise OSError(e.errno, e.strerror or str(e), named or path) from e
        self.runtime.barrier()
        if self.runtime.is_main and staging != path:
            storage.move_into(staging, storage.local_form(path))
        self.runtime.barrier()
        self.callbacks.fire("on_save_model", self, path)

    def load_model(self, path: str, process_exclusion: bool = False, **kwargs) -> None:
        """Weights `save_model` wrote (HF format) into the model being trained, under any layout."""
        check_io_options(process_exclusion, kwargs)
        if self.peft is not None:
            raise ConfigError("load_model: a PEFT run's adapters come back with load_checkpoint (or "
                              "peft.adapter in the config)")
        self.callbacks.fire("on_load_model", self, path)
        self.parallel.load_hf(storage.local_copy(path))
        self.runtime.barrier()

    def save_checkpoint(self, path: Optional[str] = None, max_to_keep: int = 0, model_only: bool = False,
                        wait: bool = False, process_exclusion: bool = False, **kwargs) -> str:
        """A DCP checkpoint under `output_dir/checkpoints/step-N` (or `path`); `latest` names it.
        With `checkpoint_async` it is written in the background unless `wait` is set."""
        check_io_options(process_exclusion, kwargs)
        default_location = path is None
        if path is None:
            if not self.config.output_dir:
                raise ValueError("output_dir: set it (or pass a path) to save checkpoints")
            path = os.path.join(checkpoint.checkpoints_dir(self.config.output_dir), f"step-{self.global_step}")
        path = checkpoint.save(self.checkpointed, path, max_to_keep=max_to_keep, model_only=model_only,
                               background=self._background)
        if default_location and not model_only:
            self._checkpointed = (self.global_step, path)
        if wait and self._background is not None:
            self._background.wait()
        for sink in self.sinks:
            sink.checkpointed()
        self.callbacks.fire("on_save_checkpoint", self, path)
        return path

    def load_checkpoint(self, path: str, process_exclusion: bool = False, **kwargs) -> None:
        check_io_options(process_exclusion, kwargs)
        checkpoint.load(self.checkpointed, path)
        self.callbacks.fire("on_load_checkpoint", self, path)

    @property
    def epoch_idx(self) -> int:
        """CoLLiE's name for the epoch being trained (0-based)."""
        return self.epoch

    @property
    def batch_idx(self) -> int:
        """CoLLiE's 0-based index of the current batch within its epoch."""
        return self.batch_in_epoch - 1

    @property
    def updates_in_backward(self) -> bool:
        """Whether the optimizer updates parameters inside backward (LOMO, AdaLomo)."""
        return self.step_strategy.updates_in_backward

    def _prepare_reference(self) -> None:
        if self.preference is not None:
            self.preference.prepare(self)

    def _describe_checkpoint(self, directory: str) -> None:
        """The files that let a checkpoint stand alone (`collie convert`, `collie serve`): the
        model's config.json, the tokenizer, and a PEFT run's record of its adapters."""
        if self.peft is not None:
            write_checkpoint_record(directory, self.peft.record(self.base_model))
        model_config = getattr(self.model, "config", None)
        if hasattr(model_config, "save_pretrained"):  # transformers' PretrainedConfig, any family
            model_config.save_pretrained(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(directory)

    # -- Stateful (what DCP and the checkpointer save and restore) ------------
    def state_dict(self) -> dict:
        """Where training stands (JSON data): the loop's position, the LR schedule, the
        callbacks' state and the optimizer's settings that are not tensors."""
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "callbacks": self.callbacks.state_dicts(self),
                "optimizer": self.step_strategy.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`; a model-only checkpoint's state holds the position alone."""
        self.global_step, self.epoch, self.batch_in_epoch = state["global_step"], state["epoch"], \
            state["batch_in_epoch"]
        if "lr_scheduler" in state:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.callbacks.load_state_dicts(self, state.get("callbacks", []))

    # -- the loop -----------------------------------------------------------
    def _total_steps(self) -> int:
        if self.config.max_steps or self.sampler is None:
            return self.config.max_steps or 0  # max_steps is None when the run trains train_epochs
        return self.sampler.batches_per_epoch() * self.config.train_epochs

    def _loop(self) -> None:
        per_epoch = self.sampler.batches_per_epoch()
        # max_steps, when set, overrides train_epochs (as in HF's Trainer): run as many epochs as it takes.
        while not self._done() and (self.config.max_steps or self.epoch < self.config.train_epochs):
            self.callbacks.fire("on_train_epoch_begin", self, self.epoch)
            for indices in self.sampler.epoch(self.epoch, self.batch_in_epoch):
                items = [[self.train_dataset[i] for i in mb] for mb in indices]
                self.callbacks.fire("on_train_batch_begin", self, items)
                start = time.perf_counter()
                result = self._guarded(self._train_step, items)
                elapsed = time.perf_counter() - start
                self.global_step += 1
                self.batch_in_epoch += 1
                row = self._row(result, elapsed)
                epoch_end = self.batch_in_epoch == per_epoch
                if self._eval_due(epoch_end):
                    row.update(self._eval_columns(self.evaluate()))
                for sink in self.sinks:
                    sink.write(row)
                self._guarded(self.callbacks.fire, "on_train_batch_end", self, result.loss)
                self._guarded(self._complete_background_checkpoint)
                if self._guarded(self._preempted) or self._done():
                    break
            if self.batch_in_epoch == per_epoch:
                self.callbacks.fire("on_train_epoch_end", self, self.epoch)
                self.epoch += 1
                self.batch_in_epoch = 0

    def _guarded(self, function: Callable, *args):
        """Run a step's work; a collective that fails because a peer died or stalled becomes
        one line naming the step."""
        try:
            return function(*args)
        except RuntimeError as e:
            failure = as_peer_failure(e, self.global_step + 1, self.config.dist_timeout_s)
            if failure is None:
                raise
            raise failure from e

    def _complete_background_checkpoint(self, wait: bool = False) -> None:
        """Finish a checkpoint written in the background once its write is done (or `wait`)."""
        if self._background is None:
            return
        try:
            self._background.wait() if wait else self._background.poll()
        except checkpoint.CheckpointWriteError as e:
            if self.config.checkpoint_errors != "warn":
                raise
            log.warning("%s; training goes on and the next checkpoint tries again (checkpoint_errors=warn)", e)

    def _settle_background_checkpoint(self) -> None:
        """Training stopped on an error while a checkpoint was being written in the background:
        it is completed, or, if its write failed too (the same full disk), its partial files are
        removed. Either way `latest` names a whole checkpoint, and the error that stopped training
        is the one reported."""
        if self._background is None:
            return
        try:
            self._background.wait()
        except checkpoint.CheckpointWriteError:
            pass

    def _preempted(self) -> bool:
        """After a preemption signal (on any rank): checkpoint, say where, stop."""
        name = self._preemption.agreed_signal(self.runtime.device) if self._preemption is not None else None
        if name is None:
            return False
        if self._checkpointed is not None and self._checkpointed[0] == self.global_step:
            # This step was just checkpointed: the signal's grace period is not spent writing it again.
            self._complete_background_checkpoint(wait=True)
            where = f"checkpoint {self._checkpointed[1]} written; run the same command to resume"
        elif self.config.output_dir:
            path = self.save_checkpoint(max_to_keep=self.config.max_to_keep, wait=True)
            where = f"checkpoint {path} written; run the same command to resume"
        else:
            where = "no checkpoint written (no output_dir)"
        if self.runtime.is_main:
            log.warning("preempted by %s after step %d: %s", name, self.global_step, where)
        self.preempted = True
        return True

    def _done(self) -> bool:
        return self.preempted or self.should_stop or bool(self.config.max_steps and self.global_step >= self.config.max_steps)

    def _eval_due(self, epoch_end: bool) -> bool:
        if not self.evaluators:
            return False
        cfg = self.config
        if cfg.eval_per_n_steps and self.global_step % cfg.eval_per_n_steps == 0:
            return True
        return bool(epoch_end and cfg.eval_per_n_epochs and (self.epoch + 1) % cfg.eval_per_n_epochs == 0)

    def _train_step(self, items: list[list[dict]]) -> StepResult:
        device = self.runtime.device
        micro = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in self.padder(mb).items()} for mb in items]
        self.model.train()
        objective = self.preference.objective if self.preference is not None else None
        if self.train_fn is not None:
            loss_of = lambda batch: self.train_fn(self, batch, self.global_step)  # noqa: E731
        elif objective is not None:
            self.preference.add_step_reference(micro)
            loss_of = objective.loss_of(self.model, self.parallel.forward_context)
        else:
            context = self.parallel.forward_context
            loss_of = lambda batch: default_loss(self.model, self.loss_fn, batch, context)  # noqa: E731
        ignore_index = getattr(self.loss_fn, "ignore_index", IGNORE_INDEX)
        result = self.parallel.train_step(micro, loss_of, self.step_strategy.backward, ignore_index,
                                          self._pipeline_loss, objective)
        if result.skipped:
            log.warning("step %d: no trainable tokens in the global batch (all labels are -100); step skipped",
                        self.global_step + 1)
            self.step_strategy.drop_gradients()
            return result
        if not math.isfinite(result.loss):
            return self._non_finite(result)
        self.step_strategy.update(self.global_step + 1, micro)
        self.lr_scheduler.step()
        return result

    def _non_finite(self, result: StepResult) -> StepResult:
        """A NaN/inf loss: stop (default) or, with nan_policy=skip, drop this step's update.
        The optimizer and the last checkpoint are untouched either way."""
        step = self.global_step + 1
        already_applied = self.step_strategy.applied_in_backward()
        if self.config.nan_policy == "skip" and not already_applied:
            log.warning("step %d: the loss is %s; the update is skipped (nan_policy=skip)", step, result.loss)
            self.step_strategy.drop_gradients()
            result.skipped = True
            return result
        applied = " (already applied inside backward)" if already_applied else ""
        raise FloatingPointError(f"step {step}: the loss is {result.loss}{applied}; training stopped, the last "
                                 "checkpoint is intact (set nan_policy=skip to skip such steps)")

    # -- reporting ----------------------------------------------------------
    def _row(self, result: StepResult, elapsed: float) -> dict:
        stats = StepStats(step=self.global_step, epoch=self.epoch, loss=result.loss,
                          lr=self.optimizer.param_groups[0]["lr"], tokens=result.tokens, step_time_s=elapsed,
                          num_devices=self.runtime.env.world_size, flops_per_token=self._model_flops(),
                          device=self.runtime.device)
        row: dict = {"step": self.global_step, "epoch": self.epoch}
        for monitor in self.monitors:
            row.update(monitor.step_columns(stats))
        row.update(result.stats)  # a preference step's rewards
        return row

    def _eval_columns(self, results: dict) -> dict:
        """Columns of the Trainer's monitors and of the evaluators' own (CoLLiE's `monitors=`)."""
        row: dict = {}
        for monitor in [*self.monitors, *(m for e in self.evaluators for m in getattr(e, "monitors", None) or [])]:
            row.update(monitor.eval_columns(results))
        return row

    def _model_flops(self) -> float:
        if self._flops_per_token is None:
            # DTensor.numel() is the global size, so sharded parameters are counted whole. A frozen
            # weight costs 4 FLOPs per token (forward, input gradient), a trained one 6.
            params = sum(p.numel() * (1.0 if p.requires_grad else 2.0 / 3.0) for p in self.model.parameters())
            self._flops_per_token = self.spec.flops_per_token(self.spec.dims(self.model.config),
                                                              self.config.data.max_length, params)
        return self._flops_per_token

    def _close_sinks(self, failed: bool) -> None:
        """Close every sink. When training already failed (a full disk during a checkpoint), a sink
        that cannot write its file either (loss.png) must not hide that first error: its file
        stays as it was and the first error is the one reported."""
        error: Optional[OSError] = None
        for sink in self.sinks:
            try:
                sink.close()
            except OSError as e:
                error = error or e
        if error is not None and not failed:
            raise error

    def _open_sinks(self, resumed: bool) -> None:
        if not self.runtime.is_main:
            return
        cfg = self.config
        if "console" in cfg.logging:
            self.sinks.append(ConsoleSink(self.total_steps, self.global_step, cfg.log_every_n_steps))
        where = cfg.monitor.dir or cfg.output_dir
        files = RunFiles(where, resumed) if where else None
        if files is not None and "csv" in cfg.logging:
            csv_sink = CSVSink(os.path.join(files.local, "metrics.csv"), resume=resumed)
            if resumed:
                csv_sink.truncate_after(self.global_step)
            self.sinks.append(csv_sink)
        if files is not None and "tensorboard" in cfg.logging:
            self.sinks.append(TensorBoardSink(os.path.join(files.local, "tensorboard")))
        if files is not None and "plot" in cfg.logging:
            # Resumed: the curve continues from the rows metrics.csv kept.
            kept = next((s.rows for s in self.sinks if isinstance(s, CSVSink)), [])
            self.sinks.append(LossCurveSink(os.path.join(files.local, "loss.png"), kept))
        if "wandb" in cfg.logging:
            self.sinks.append(WandbSink(files.local if files else None, cfg.to_dict(), resumed, cfg.monitor))
        if files is not None and files.remote:
            self.sinks.append(files)  # last: uploads what the sinks above have just written

