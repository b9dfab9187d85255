"""The command-line contract of DESIGN.md, end to end on the quickstart config."""

import csv
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from collie.cli import main
from collie.commands.evaluate import run_eval
from collie.models.base import CollieModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_resume_export_generate(tmp_path, capsys):
    out = str(tmp_path / "run")
    common = [f"output_dir={out}", f"data.train_file={TRAIN_FILE}", f"data.eval_file={TRAIN_FILE}",
              "checkpoint_every_n_steps=6", "eval_per_n_steps=6", "logging=[console,csv]"]
    assert main(["train", QUICKSTART, "max_steps=12", *common]) == 0
    rows = _rows(os.path.join(out, "metrics.csv"))
    assert [int(r["step"]) for r in rows] == list(range(1, 13))
    assert {"step", "loss", "lr", "tokens", "step_time_s", "tgs", "ppl", "exact_match"} <= set(rows[0])
    assert rows[5]["ppl"] and not rows[4]["ppl"]
    assert float(rows[11]["ppl"]) < float(rows[5]["ppl"])
    with open(os.path.join(out, "checkpoints", "latest")) as f:
        assert f.read().strip() == "step-12"

    # Same command, same output_dir: resumes from `latest` and continues the numbering.
    assert main(["train", QUICKSTART, "max_steps=18", *common]) == 0
    rows = _rows(os.path.join(out, "metrics.csv"))
    assert [int(r["step"]) for r in rows] == list(range(1, 19))

    final = os.path.join(out, "final")
    ours = CollieModel.from_pretrained(final).eval()
    hf = AutoModelForCausalLM.from_pretrained(final).eval()
    ids = torch.randint(0, 4000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, hf(ids).logits)
    assert os.path.isfile(os.path.join(final, "tokenizer.json"))

    # The DCP checkpoint of the last step converts to the same HF model as `final/`.
    converted = str(tmp_path / "converted")
    assert main(["convert", os.path.join(out, "checkpoints", "step-18"), "--to-hf", converted]) == 0
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(converted).eval()(ids).logits, hf(ids).logits)
    assert main(["convert", final, "--to-dcp", str(tmp_path / "warm")]) == 0
    assert (tmp_path / "warm" / "trainer_state.json").is_file()

    # `collie generate` prints transformers' greedy continuation of the prompt.
    prompt = "Question: What is collie?\nAnswer: "
    tokenizer = AutoTokenizer.from_pretrained(final)
    prompt_ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    expected_ids = hf.generate(prompt_ids, attention_mask=torch.ones_like(prompt_ids), max_new_tokens=5,
                               do_sample=False, pad_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(expected_ids[0, prompt_ids.shape[1]:], skip_special_tokens=True)
    capsys.readouterr()
    assert main(["generate", final, prompt, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_init_model_then_train_it(tmp_path):
    model_dir = str(tmp_path / "tiny")
    assert main(["init-model", "--shape", "tiny", model_dir]) == 0
    out = str(tmp_path / "run")
    assert main(["train", QUICKSTART, "init_shape=null", f"model={model_dir}", f"output_dir={out}",
                 f"data.train_file={TRAIN_FILE}", "data.eval_file=null", "max_steps=2", "logging=[csv]"]) == 0
    assert len(_rows(os.path.join(out, "metrics.csv"))) == 2


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["train", QUICKSTART, "optimizer.name=adamx", f"output_dir={tmp_path}"]) == 2
    assert "optimizer.name: 'adamx' is not one of" in capsys.readouterr().err
    assert main(["train", QUICKSTART, f"output_dir={tmp_path}", "data.train_file=/nope.jsonl"]) == 2
    assert "/nope.jsonl: data file not found" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing"), "hi"]) == 2
    assert "model directory not found" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", QUICKSTART, f"output_dir={blocker}/sub"]) == 2
    err = capsys.readouterr().err
    assert "output_dir:" in err and "is not writable" in err


@pytest.mark.parametrize("family, weight", [("internlm2", "model.layers.0.attention.wqkv.weight"),
                                            ("internlm", "model.layers.0.self_attn.q_proj.bias"),
                                            ("mistral", "model.layers.0.self_attn.q_proj.weight"),
                                            ("chatglm", "transformer.encoder.layers.0.self_attention.query_key_value."
                                                        "bias"),
                                            ("glm", "model.layers.0.mlp.gate_up_proj.weight"),
                                            ("moss", "transformer.h.0.attn.qkv_proj.weight"),
                                            ("chatglm_v1", "transformer.layers.0.attention.query_key_value.weight")])
def test_every_family_through_the_commands(tmp_path, capsys, family, weight):
    """init-model writes the family's own layout; train, export, convert and generate keep it."""
    model_dir, out = str(tmp_path / family), str(tmp_path / "run")
    assert main(["init-model", "--family", family, "--shape", "tiny", model_dir]) == 0
    assert main(["train", QUICKSTART, "init_shape=null", f"model={model_dir}", f"output_dir={out}",
                 f"data.train_file={TRAIN_FILE}", "data.eval_file=null", "max_steps=2", "logging=[csv]",
                 "checkpoint_every_n_steps=2"]) == 0
    final = load_file(os.path.join(out, "final", "model.safetensors"))
    assert weight in final and load_file(os.path.join(model_dir, "model.safetensors")).keys() == final.keys()
    model_type = "chatglm" if family == "chatglm_v1" else family  # ChatGLM-6B shares ChatGLM2's model_type
    assert json.load(open(os.path.join(out, "final", "config.json")))["model_type"] == model_type
    assert main(["convert", os.path.join(out, "checkpoints", "step-2"), "--to-hf", str(tmp_path / "hf")]) == 0
    converted = load_file(tmp_path / "hf" / "model.safetensors")
    assert converted.keys() == final.keys() and all(torch.equal(converted[k], final[k]) for k in final)
    model, tokenizer = CollieModel.from_pretrained(os.path.join(out, "final")), AutoTokenizer.from_pretrained(model_dir)
    ids = torch.tensor([tokenizer("Question: ")["input_ids"]])
    greedy = model.generate(ids, max_new_tokens=3, eos_token_id=tokenizer.eos_token_id)
    expected = tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)
    capsys.readouterr()
    assert main(["generate", os.path.join(out, "final"), "Question: ", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out == expected + "\n"


def test_init_model_names_unknown_families_and_shapes(tmp_path, capsys):
    assert main(["init-model", "--family", "gpt9", "--shape", "tiny", str(tmp_path / "x")]) == 2
    assert "family: 'gpt9' is not one of llama, qwen2, mistral, internlm, internlm2, chatglm_v1, chatglm, glm, moss" in \
        capsys.readouterr().err
    assert main(["init-model", "--shape", "3t", str(tmp_path / "x")]) == 2
    assert "shape: '3t' is not one of" in capsys.readouterr().err


def test_lora_run_resumes_exports_merges_and_generates(tmp_path, capsys):
    base = str(tmp_path / "base")
    assert main(["init-model", "--shape", "tiny", base]) == 0
    out = str(tmp_path / "lora")
    common = [f"model={base}", f"output_dir={out}", f"data.train_file={TRAIN_FILE}", "data.eval_file=null",
              "checkpoint_every_n_steps=3", "logging=[csv]", "peft.r=4"]
    lora_yaml = os.path.join(ROOT, "examples", "lora.yaml")
    assert main(["train", lora_yaml, "max_steps=3", *common]) == 0
    assert main(["train", lora_yaml, "max_steps=6", *common]) == 0  # resumes from step 3
    assert [int(r["step"]) for r in _rows(os.path.join(out, "metrics.csv"))] == list(range(1, 7))
    final = os.path.join(out, "final")
    with open(os.path.join(final, "adapter_config.json")) as f:
        adapter = json.load(f)
    assert adapter["r"] == 4 and sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert not os.path.exists(os.path.join(final, "model.safetensors"))

    merged = str(tmp_path / "merged")
    assert main(["convert", final, "--merge-lora", "--to-hf", merged]) == 0
    from_checkpoint = str(tmp_path / "from_checkpoint")
    assert main(["convert", os.path.join(out, "checkpoints", "step-6"), "--merge-lora", "--to-hf",
                 from_checkpoint]) == 0
    merged_weights, checkpoint_weights = load_file(f"{merged}/model.safetensors"), \
        load_file(f"{from_checkpoint}/model.safetensors")
    assert all(torch.equal(merged_weights[k], checkpoint_weights[k]) for k in merged_weights)
    assert not torch.equal(merged_weights["model.layers.0.self_attn.q_proj.weight"],
                           load_file(f"{base}/model.safetensors")["model.layers.0.self_attn.q_proj.weight"])

    prompt = "Question: What is collie?\nAnswer: "
    capsys.readouterr()
    assert main(["generate", final, prompt, "--max-new-tokens", "5"]) == 0
    from_adapter = capsys.readouterr().out
    assert main(["generate", merged, prompt, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == from_adapter

    assert main(["convert", final, "--to-hf", str(tmp_path / "x"), "--base", base]) == 2
    assert "--merge-lora: use it with --to-hf" in capsys.readouterr().err


def test_eval_command_on_an_export_and_on_a_checkpoint(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", QUICKSTART, "max_steps=6", f"output_dir={out}", f"data.train_file={TRAIN_FILE}",
                 f"data.eval_file={TRAIN_FILE}", "eval_per_n_steps=6", "checkpoint_every_n_steps=6",
                 "logging=[csv]"]) == 0
    logged = float(_rows(os.path.join(out, "metrics.csv"))[-1]["ppl"])
    capsys.readouterr()
    common = [QUICKSTART, f"data.eval_file={TRAIN_FILE}", "logging=[]"]
    assert main(["eval", os.path.join(out, "final"), *common, "--out", str(tmp_path / "final.json")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["metric", "value"] and "exact_match" in table
    from_export = json.loads((tmp_path / "final.json").read_text())
    assert abs(from_export["ppl"] / logged - 1) <= 1e-6 and len(from_export["samples"]) == 3
    checkpoint = os.path.join(out, "checkpoints", "step-6")
    assert main(["eval", checkpoint, *common, "--out", str(tmp_path / "ckpt.json")]) == 0
    from_checkpoint = json.loads((tmp_path / "ckpt.json").read_text())
    assert from_checkpoint["ppl"] == from_export["ppl"] and from_checkpoint["model"] == checkpoint
    assert main(["eval", os.path.join(out, "final"), QUICKSTART, "data.eval_file=null"]) == 2
    assert "data.eval_file: `collie eval` needs an evaluation file" in capsys.readouterr().err


DPO = os.path.join(ROOT, "examples", "dpo.yaml")
PAIRS_FILE = os.path.join(ROOT, "examples", "data", "preference_qa.jsonl")


def test_dpo_example_trains_and_collie_eval_scores_it(tmp_path):
    """examples/dpo.yaml: step 1 is ln 2 (the precomputed reference is the initial model), the
    rewards reach metrics.csv, and `collie eval` of the final model reports what the evaluation
    during training reported — with the reference read from the run's cache, or computed again
    from the model the run started from."""
    out = str(tmp_path / "dpo")
    assert main(["train", DPO, f"output_dir={out}", "max_steps=6", "eval_per_n_steps=6", "logging=[csv]",
                 "checkpoint_every_n_steps=0", f"data.train_file={PAIRS_FILE}", f"data.eval_file={PAIRS_FILE}"]) == 0
    rows = _rows(os.path.join(out, "metrics.csv"))
    assert float(rows[0]["loss"]) == pytest.approx(0.6931471805599453, abs=1e-6)
    assert float(rows[0]["reward_margin"]) == 0 and {"rewards_chosen", "reward_accuracy"} <= set(rows[0])
    during = {key: float(rows[-1][key]) for key in ("eval_loss", "eval_reward_margin", "eval_reward_accuracy")}
    assert during["eval_loss"] < 0.6931 and during["eval_reward_margin"] > 0
    assert os.path.isfile(os.path.join(out, "reference", "eval-0.json"))

    config = os.path.join(out, "config.yaml")
    cached = run_eval(os.path.join(out, "final"), config, [], str(tmp_path / "cached.json"))
    again = run_eval(os.path.join(out, "final"), config, [f"output_dir={tmp_path / 'elsewhere'}"],
                     str(tmp_path / "again.json"))
    for key, value in during.items():
        assert cached[key] == pytest.approx(value, rel=1e-5) and again[key] == pytest.approx(value, rel=1e-5), key
    assert os.path.isfile(tmp_path / "elsewhere" / "reference" / "eval-0.json")
