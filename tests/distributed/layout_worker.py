"""Run under torchrun: train the same seed checkpoint under several layouts, write the losses."""

import contextlib
import csv
import json
import os
import sys

import torch
import torch.distributed as dist

from collie import CollieConfig
from collie.data import CollieDatasetForClassification, CollieDatasetForPreference, CollieDatasetForTraining
from collie.evaluate import AccuracyMetric, EvaluatorForClassification, EvaluatorForPerplexity, PPLMetric
from collie.models import registry
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import family_layouts  # noqa: E402
from helpers import fused_llama_spec  # noqa: E402

# Each layout keeps the global batch at 4 samples (micro × grad_accum × dp). Everything runs in
# float64 (parameters and compute), so layouts must agree to 1e-9 whatever the machine; the
# single-process reference pads on the right, layouts named `_left` pad on the left.
LEFT = "data.padding_side=left"
LAYOUTS = {
    "dp2_left": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1", LEFT],
    "zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1"],
    "zero2_dp2": ["dp_size=2", "zero_stage=2", "train_micro_batch_size=1"],
    "tp2": ["dp_size=1", "tp_size=2"],
    # CoLLiE's API order: the user builds the optimizer before the Trainer shards the model.
    "zero3_dp2_user_optimizer": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1"],
    "tp2_user_optimizer": ["dp_size=1", "tp_size=2", "checkpointing=selective"],
    "tp2_sequence_parallel": ["dp_size=1", "tp_size=2", "sequence_parallel=true"],
    "tp2_sp_loss_parallel_left": ["dp_size=1", "tp_size=2", "sequence_parallel=true", "loss_parallel=true", LEFT],
    # The loss a chunk of 5 tokens at a time: on vocabulary shards, and on FSDP shards.
    "tp2_loss_parallel_chunked": ["dp_size=1", "tp_size=2", "loss_parallel=true", "loss_chunk_tokens=5"],
    "zero3_dp2_chunked": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1", "loss_chunk_tokens=5"],
    "pp2_gpipe_left": ["dp_size=1", "pp_size=2", "pp_schedule=gpipe", LEFT],
    "pp2_1f1b": ["dp_size=1", "pp_size=2", "pp_schedule=1f1b"],
    "pp2_1f1b_user_optimizer": ["dp_size=1", "pp_size=2", "pp_schedule=1f1b", "checkpointing=true",
                                "checkpointing_every=2"],
    "pp2_interleaved": ["dp_size=1", "pp_size=2", "pp_schedule=interleaved1f1b", "pp_virtual_stages=2",
                        "pp_partition_method=parameters"],
    # The last stage computes its micro-batches' loss in chunks: holding one stage, and holding
    # the last of two virtual stages.
    "pp2_1f1b_chunked": ["dp_size=1", "pp_size=2", "pp_schedule=1f1b", "loss_chunk_tokens=5"],
    "pp2_interleaved_chunked": ["dp_size=1", "pp_size=2", "pp_schedule=interleaved1f1b", "pp_virtual_stages=2",
                                "loss_chunk_tokens=5"],
}
# Four processes (a second launch).
LAYOUTS_4 = {
    "dp2_tp2": ["dp_size=2", "tp_size=2", "train_micro_batch_size=1"],
    "pp2_tp2": ["dp_size=1", "pp_size=2", "tp_size=2"],
    "pp2_dp2_zero3_left": ["dp_size=2", "pp_size=2", "zero_stage=3", "train_micro_batch_size=1", LEFT],
    "pp2_dp2_interleaved": ["dp_size=2", "pp_size=2", "pp_schedule=interleaved1f1b", "pp_virtual_stages=2",
                            "train_micro_batch_size=1"],
    # zero_stage 0: the last stage, a view computing the chunked loss, is replicated through FSDP.
    "pp2_dp2_chunked": ["dp_size=2", "pp_size=2", "train_micro_batch_size=1", "loss_chunk_tokens=5"],
}


# In-backward optimizers on the layouts that change how they see gradients.
IN_BACKWARD = {
    "lomo": ["optimizer.name=lomo", "optimizer.lr=0.05", "optimizer.clip_grad_norm=null"],
    "lomo_clip": ["optimizer.name=lomo", "optimizer.lr=0.05", "optimizer.clip_grad_norm=1.0"],
    "adalomo": ["optimizer.name=adalomo", "optimizer.clip_grad_norm=null"],
    "adalomo_clip": ["optimizer.name=adalomo", "optimizer.clip_grad_norm=1.0"],
}
IN_BACKWARD_LAYOUTS = ("dp2_left", "zero3_dp2", "tp2")
# dp2×tp2 with zero_stage 0 replicates through FSDP (DDP cannot hold DTensors): the update then
# waits for FSDP's reduce-scatter instead of running in per-parameter hooks.
IN_BACKWARD_LAYOUTS_4 = ("pp2_tp2", "dp2_tp2")
# A checkpoint whose format fuses q/k/v (written next to the seed as `<seed>_fused_qkv`): each
# rank splits the fused tensor and copies in only its own shards.
FUSED_LAYOUTS = ("tp2", "zero3_dp2")

# A loss of the user's (CoLLiE's `Trainer(loss_fn=…)`): the pipeline's last stage must compute it,
# not collie's own next-token loss.
USER_LOSS_LAYOUTS = ("pp2_1f1b", "pp2_gpipe_left")


class SmoothedLoss(torch.nn.Module):
    """Next-token cross entropy with label smoothing: a token mean, unlike collie's in value."""

    def forward(self, logits, labels):
        shifted = torch.nn.functional.pad(labels[..., 1:], (0, 1), value=-100)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), shifted.reshape(-1),
                                                 ignore_index=-100, label_smoothing=0.1)


# The float32 path of the core layouts, compared with a float32 single process by loss only
# (fp32 reduction order differs between layouts; see the test).
FP32 = "param_dtype=float32"
FP32_LAYOUTS = ("dp2_left", "tp2", "pp2_1f1b")


@contextlib.contextmanager
def fused_qkv_format():
    """LLaMA checkpoints read and written in the fused-q/k/v format (tests/helpers.py)."""
    families = list(registry.FAMILIES)
    registry.FAMILIES[:] = [fused_llama_spec()]
    try:
        yield
    finally:
        registry.FAMILIES[:] = families


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


# export path -> perplexity, greedy tokens and classification predictions after training, from
# the layout's own evaluator model (a PipelinedModel under pipeline parallel).
EVALS: dict[str, dict] = {}
PROMPT = [[5, 17, 42, 9]]
CHOICES = [{"input": "ab c", "options": ["de", "f", "ghi"], "target": 0}, {"input": "xyz", "output": "yes"},
           {"input": "q", "output": "no"}, {"input": "long prompt", "output": "yes"}]


class CharTokenizer:
    eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 250 for c in text]}


# Preference training (issue 28): the pair loss's mean over the global batch's pairs and trl's
# rewards, on the layouts that change how a pair's rows and their loss are split: replicas (left
# padding), FSDP shards, vocabulary-sharded logits (loss parallel, sequence parallel), pipeline
# micro-batches cut from pairs, and dp×tp. With AdamW and with LOMO (the pair loss must be whole
# before its in-backward update, whichever loss it is); SimPO for a loss with no reference.
PREFERENCE = {
    "dpo/adamw": ["preference.loss=dpo"],
    "dpo/lomo": ["preference.loss=dpo", *IN_BACKWARD["lomo"]],
    "simpo/adamw": ["preference.loss=simpo"],
}
PREFERENCE_LAYOUTS = ("dp2_left", "zero3_dp2", "tp2_sp_loss_parallel_left", "pp2_1f1b")
PREFERENCE_LAYOUTS_4 = ("dp2_tp2",)
# The frozen copy (reference: model) put in the same layout must give the precomputed losses.
MODEL_REFERENCE = "preference.reference=model"
MODEL_REFERENCE_LAYOUTS = ("zero3_dp2", "pp2_1f1b")
PAIRS = [{"prompt": "q" * (1 + i % 4) + str(i), "chosen": "ab"[i % 2] * (2 + i % 3), "rejected": "xyz"[: 1 + i % 3] + "w"}
         for i in range(16)]


class PairTokenizer:
    """Characters as tokens (no eos: nothing is appended to a completion)."""

    eos_token = None
    eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 250 for c in text]}


def run_preference(model_dir: str, overrides: list[str], output_dir: str) -> dict:
    """6 steps of preference training; the losses, the reward columns of metrics.csv, and an
    evaluation of the trained model."""
    config = CollieConfig.load(None, ["train_micro_batch_size=2", "gradient_accumulation_steps=2", "max_steps=6",
                                      "logging=[csv]", f"output_dir={output_dir}", "optimizer.lr=0.001",
                                      "data.max_length=16", "param_dtype=float64", *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    losses = Losses()
    pairs = CollieDatasetForPreference(PAIRS, PairTokenizer(), max_length=16)
    trainer = Trainer(model, config, train_dataset=pairs, eval_dataset=pairs[:5], callbacks=[losses])
    trainer.train()
    # The trained model's preference evaluation (5 pairs: uneven shares over data-parallel ranks).
    result = {"loss": losses.values, "eval": list(trainer.evaluate().values())}
    if int(os.environ.get("RANK", "0")) == 0:
        with open(os.path.join(output_dir, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
        for column in ("reward_margin", "reward_accuracy", "rewards_chosen"):
            result[column] = [float(row[column]) for row in rows]
    return result


class Predictions(AccuracyMetric):
    def get_metric(self):
        return {**super().get_metric(), "preds": [p for p, _ in self.pairs]}


def run(model_dir: str, records: str, overrides: list[str], export: str = "", loss_fn=None) -> list[float]:
    config = CollieConfig.load(None, ["train_micro_batch_size=2", "gradient_accumulation_steps=2", "max_steps=10",
                                      "logging=[]", "optimizer.lr=0.001", "optimizer.clip_grad_norm=1.0",
                                      "data.max_length=16", "param_dtype=float64", *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    with open(records) as f:
        dataset = CollieDatasetForTraining(json.load(f))
    losses = Losses()
    optimizer = None
    if export.endswith("user_optimizer"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.optimizer.lr, weight_decay=0.0)
    evaluator = EvaluatorForPerplexity(model, config, dataset[:6], {"ppl": PPLMetric()})
    trainer = Trainer(model, config, train_dataset=dataset, callbacks=[losses], optimizer=optimizer,
                      evaluators=[evaluator], loss_fn=loss_fn)
    trainer.train()
    if export:
        trainer.save_model(export)
        result = {"ppl": trainer.evaluate()["ppl"]}
        classify = EvaluatorForClassification(model, config, CollieDatasetForClassification(
            CHOICES, CharTokenizer(), options=["yes", "no"]), {"acc": Predictions()}, length_normalised=True)
        classify.bind(trainer.parallel)
        gathered = classify.evaluate()["preds"]  # rank by rank: rank r scored items r, r + dp, ...
        dp = trainer.runtime.dp_size
        order = [i for rank in range(dp) for i in range(rank, len(CHOICES), dp)]
        result["classes"] = [gathered[order.index(i)] for i in range(len(CHOICES))]
        if not config.sequence_parallel:  # token-by-token decoding cannot split the sequence
            result["tokens"] = evaluator.model.generate(torch.tensor(PROMPT), max_new_tokens=6).tolist()
        EVALS[export] = result
    return losses.values


def main() -> None:
    model_dir, records, out = sys.argv[1:4]
    layouts = LAYOUTS_4 if os.environ["WORLD_SIZE"] == "4" else LAYOUTS
    if len(sys.argv) > 4:  # only the named layouts (the two-node test)
        layouts = {name: layouts[name] for name in sys.argv[4].split(",")}
    # Every layout exports its trained model; the test compares them with transformers.
    results = {name: run(model_dir, records, overrides, export=f"{out}.{name}")
               for name, overrides in layouts.items()}
    for optimizer, settings in IN_BACKWARD.items():
        for layout in (IN_BACKWARD_LAYOUTS if layouts is LAYOUTS else IN_BACKWARD_LAYOUTS_4 if layouts is LAYOUTS_4
                       else ()):
            results[f"{optimizer}/{layout}"] = run(model_dir, records, layouts[layout] + settings)
    if layouts is LAYOUTS:
        for layout in USER_LOSS_LAYOUTS:
            results[f"user_loss/{layout}"] = run(model_dir, records, layouts[layout], loss_fn=SmoothedLoss())
        for layout in FP32_LAYOUTS:
            results[f"fp32/{layout}"] = run(model_dir, records, layouts[layout] + [FP32])
        with fused_qkv_format():
            for layout in FUSED_LAYOUTS:
                results[f"fused_qkv/{layout}"] = run(model_dir + "_fused_qkv", records, layouts[layout])
        for family in family_layouts.FAMILIES:
            for layout, overrides in family_layouts.LAYOUTS.items():
                for optimizer, settings in family_layouts.OPTIMIZERS.items():
                    results[f"{family}/{layout}/{optimizer}"] = run(family_layouts.seed_dir(model_dir, family),
                                                                    family_layouts.records_for(family, records),
                                                                    overrides + settings)
    for layout in (PREFERENCE_LAYOUTS if layouts is LAYOUTS else PREFERENCE_LAYOUTS_4 if layouts is LAYOUTS_4 else ()):
        for name, settings in PREFERENCE.items():
            results[f"preference/{name}/{layout}"] = run_preference(model_dir, layouts[layout] + settings,
                                                                    f"{out}.preference.{name.replace('/', '-')}.{layout}")
    for layout in (MODEL_REFERENCE_LAYOUTS if layouts is LAYOUTS else ()):
        results[f"preference/dpo/adamw/model_reference/{layout}"] = run_preference(
            model_dir, layouts[layout] + PREFERENCE["dpo/adamw"] + [MODEL_REFERENCE],
            f"{out}.preference.model_reference.{layout}")
    results.update({f"eval/{name}": EVALS[f"{out}.{name}"] for name in layouts})
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
