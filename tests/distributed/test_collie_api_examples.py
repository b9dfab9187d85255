"""CoLLiE's fine-tuning examples, written in CoLLiE's API (examples/collie_api/), each run under its
own layout on a tiny model of its family: LLaMA classification (dp 4, ZeRO-3), LLaMA summarisation
(tp 8, run as tp 2), ChatGLM-6B translation (pp 8, run as pp 2) and LLaMA prompt tuning (tp 2 ×
dp 2). The hub id each names resolves to a random tiny model in a local Hugging Face cache.

Each example runs as written except by exact text substitutions of sizes (layout sizes above 4
ranks, dataset repeats, steps, epochs, new tokens) and of the learning rate: CoLLiE's 2e-5 moves a
random tiny model too little in a few steps to see its loss fall. What each one writes is
checked: the CSV its ds_config monitor writes under ./ds_logs/, the evaluators' columns in it, the
decoded samples, the prompt in peft's files.
"""

import csv
import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import hub_cache_with
from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
LLAMA = "decapoda-research/llama-7b-hf"


def run_example(tmp_path, example: str, data: str, substitutions: tuple, nproc: int, hub_id: str, family: str,
                appended: str = "") -> tuple[str, list[dict]]:
    """Run examples/collie_api/`example` with `substitutions` under torchrun on `nproc` ranks, in a
    copy of the examples tree (`data`: the example folder whose sample file it reads); return its
    output and the rows of the CSV its monitors wrote."""
    cache = tmp_path / "hf"
    hub_cache_with(cache, hub_id, family)
    script = open(os.path.join(EXAMPLES, "collie_api", example)).read()
    for old, new in substitutions:
        assert old in script, old
        script = script.replace(old, new)
    copy = tmp_path / "examples" / "collie_api" / example
    copy.parent.mkdir(parents=True)
    copy.write_text(script + appended)
    (tmp_path / "examples" / data).symlink_to(os.path.join(EXAMPLES, data))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                          str(copy)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-5000:]
    (metrics,) = glob.glob(str(tmp_path / "ds_logs" / "*" / "metrics.csv"))
    return output, list(csv.DictReader(open(metrics)))


def losses(rows: list[dict]) -> list[float]:
    return [float(row["loss"]) for row in rows]


def evaluated(rows: list[dict], column: str) -> dict[int, float]:
    """{step: value} of an evaluator's column, at the steps it ran."""
    return {int(row["step"]): float(row[column]) for row in rows if row.get(column)}


def assert_steplr(rows: list[dict], lr: float) -> None:
    """The example's own StepLR(step_size=1, gamma=0.9) set the learning rate of every step."""
    for row in rows:
        assert float(row["lr"]) == pytest.approx(lr * 0.9 ** int(row["step"]), rel=1e-9), row


def test_llama_classification_on_four_data_parallel_ranks_learns_and_scores_accuracy(tmp_path):
    output, rows = run_example(tmp_path, "finetune_llama_for_classification.py", "classification",
                               (("REPEAT = 100 ", "REPEAT = 16 "), ("lr=2e-5", "lr=2e-3")),
                               nproc=4, hub_id=LLAMA, family="llama")
    # 24 reviews × 16, less 1% held out for perplexity: 5 global batches of 16 × 4 ranks.
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5]
    trained = losses(rows)
    assert trained[-1] < trained[0] - 1.0, trained
    # Both evaluators ran at the epoch's end, their columns written by their EvalMonitors.
    assert list(evaluated(rows, "acc")) == [5] and 0.0 <= evaluated(rows, "acc")[5] <= 1.0
    assert list(evaluated(rows, "ppl")) == [5] and 1.0 < evaluated(rows, "ppl")[5] < math.inf
    # The example's cosine schedule (T_max=1000) set the learning rate, not collie's default.
    assert float(rows[0]["lr"]) == pytest.approx(2e-3 * (1 + math.cos(math.pi / 1000)) / 2, rel=1e-9)
    assert "fp16 mixed precision" in output


def test_llama_summary_under_tensor_parallel_scores_rouge_each_epoch(tmp_path):
    _, rows = run_example(tmp_path, "finetune_llama_for_summary.py", "summarization",
                          (("config.tp_size = 8", "config.tp_size = 2"),
                           ("config.gradient_accumulation_steps = 128", "config.gradient_accumulation_steps = 4"),
                           ("config.train_epochs = 10", "config.train_epochs = 2"), ("default=16,", "default=2,"),
                           ("max_new_tokens=100", "max_new_tokens=16"), ("lr=2e-5", "lr=2e-3")),
                          nproc=2, hub_id=LLAMA, family="llama")
    # 8 bills × 2 a epoch, 4 micro-batches of 1 a step: 4 steps an epoch, 2 epochs.
    assert [int(row["step"]) for row in rows] == list(range(1, 9))
    trained = losses(rows)
    assert sum(trained[-3:]) < sum(trained[:3]) - 1.0, trained
    assert_steplr(rows, 2e-3)
    for column in ("rouge1", "rouge2", "rougeL"):
        scores = evaluated(rows, column)
        assert list(scores) == [4, 8], column  # eval_per_n_epochs=1
        assert all(0.0 <= score <= 100.0 for score in scores.values()), scores


def test_chatglm_translation_through_a_pipeline_scores_bleu_and_perplexity(tmp_path):
    output, rows = run_example(tmp_path, "finetune_chatglm_for_translation.py", "translation",
                               (("config.pp_size = 8", "config.pp_size = 2"),
                                ("config.gradient_accumulation_steps = 128", "config.gradient_accumulation_steps = 2"),
                                ("config.train_epochs = 10", "config.train_epochs = 2"),
                                ("REPEAT = 500 ", "REPEAT = 1 "), ("max_new_tokens=100", "max_new_tokens=8"),
                                ("lr=2e-5", "lr=2e-3")),
                               nproc=2, hub_id="THUDM/chatglm-6b", family="chatglm_v1")
    assert "dp_size set to 1 = world 2 / tp 1 / pp 2" in output
    # 16 pairs, 1 held out for perplexity: 7 steps of 2 micro-batches an epoch, 2 epochs.
    assert [int(row["step"]) for row in rows] == list(range(1, 15))
    trained = losses(rows)
    assert sum(trained[-3:]) < sum(trained[:3]) - 1.0, trained
    assert_steplr(rows, 2e-3)
    bleu, ppl = evaluated(rows, "bleu"), evaluated(rows, "ppl")
    assert list(bleu) == list(ppl) == [7, 14]
    assert all(0.0 <= score <= 100.0 for score in bleu.values()), bleu
    assert ppl[14] < ppl[7], ppl  # the held-out pair became likelier as the pipeline trained
    assert output.count("decode: ") == 2 * 16  # DecodeMetric logged each evaluation's 16 translations


# Appended to the prompt-tuning example: after it ran, each rank compares the model it trained with
# the checkpoint it started from, and rank 0 writes what changed and what the optimizer held.
WHAT_TRAINED = """
from collie.tensors import full_tensor

start = dict(LlamaForCausalLM.from_pretrained(pretrained_model).named_parameters())
changed = {name: float((full_tensor(param.detach()) - start[name]).abs().max())
           for name, param in trainer.model.named_parameters() if name in start}
names = {id(param): name for name, param in trainer.model.named_parameters()}
report = {"changed": changed, "trainable": [name for name, p in trainer.model.named_parameters() if p.requires_grad],
          "optimized": [names[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]]}
if trainer.runtime.is_main:
    with open("what_trained.json", "w") as f:
        json.dump(report, f)
"""


def test_llama_prompt_tuning_on_tp2_dp2_trains_only_the_prompt_and_writes_peft_files(tmp_path):
    from peft import PeftModel
    from transformers import AutoTokenizer
    from transformers import LlamaForCausalLM as HFLlama

    _, rows = run_example(tmp_path, "peft/finetune_llama_prompt_tuning.py", "classification",
                          (("REPEAT = 40 ", "REPEAT = 2 "), ("config.eval_per_n_steps = 100", "config.eval_per_n_steps = 6"),
                           ("lr=2e-5", "lr=2e-2")),
                          nproc=4, hub_id=LLAMA, family="llama", appended=WHAT_TRAINED)
    # 24 reviews × 2 less the 32 evaluated: 8 steps of 1 review on each of 2 data-parallel ranks.
    assert [int(row["step"]) for row in rows] == list(range(1, 9))
    trained = losses(rows)
    assert sum(trained[-3:]) < sum(trained[:3]) - 0.5, trained
    assert list(evaluated(rows, "ppl")) == [6]
    with open(tmp_path / "result" / "decode.jsonl") as f:
        assert len([json.loads(line) for line in f]) == 16  # every evaluation sample ([:32] of 16) decoded, once

    # Only the prompt trained: the example's optimizer, built on the base model's parameters
    # before the Trainer put the prompt in front, trains the prompt; every base weight is as loaded.
    report = json.loads((tmp_path / "what_trained.json").read_text())
    assert report["trainable"] == report["optimized"] == ["prompt.weight"]
    assert len(report["changed"]) > 0 and set(report["changed"].values()) == {0.0}, report["changed"]

    # The prompt is in peft's files, moved from its start (the embeddings of the init text), and
    # peft loads it onto the base model.
    snapshot = glob.glob(str(tmp_path / "hf" / "models--*" / "snapshots" / "*"))[0]
    saved = load_file(tmp_path / "prompt_tuning" / "adapter_model.safetensors")["prompt_embeddings"]
    ids = AutoTokenizer.from_pretrained(snapshot)("Classify if the comment is positive or negative.",
                                                  add_special_tokens=False)["input_ids"][:8]
    start = load_file(os.path.join(snapshot, "model.safetensors"))["model.embed_tokens.weight"][ids]
    assert saved.shape == start.shape and saved.shape[0] == 8
    assert (saved - start).abs().max() > 1e-3
    peft_model = PeftModel.from_pretrained(HFLlama.from_pretrained(snapshot), str(tmp_path / "prompt_tuning"))
    assert torch.equal(peft_model.prompt_encoder["default"].embedding.weight.detach(), saved)
