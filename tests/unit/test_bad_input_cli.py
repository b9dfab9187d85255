"""The command line's rows of the bad-input table (issue 27): each bad input is one
`collie: error:` line naming the cause, exit 2, checked before work starts; nothing a user made
is overwritten without `--overwrite`; no partial output is left behind."""

import json
import os

import pytest
import torch
from helpers import free_port
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from collie import CollieConfig, ConfigError
from collie.cli import main
from collie.convert import hf_to_dcp
from collie.generation import choose_next
from collie.peft.adapter_files import CHECKPOINT_RECORD, base_model_record, write_checkpoint_record

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "examples", "quickstart.yaml")
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model and a model-only DCP checkpoint of it, made once."""
    root = tmp_path_factory.mktemp("tiny")
    model, checkpoint = str(root / "model"), str(root / "checkpoint")
    assert main(["init-model", "--shape", "tiny", model]) == 0
    hf_to_dcp(model, checkpoint)
    return model, checkpoint


def error_line(capsys) -> str:
    """The one line a refused command prints (and nothing else on stderr)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("collie: error: "), err
    return err


def _fill(path) -> None:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "mine.txt"), "w") as f:
        f.write("a user's file")


def _still_mine(path) -> bool:
    return sorted(os.listdir(path)) == ["mine.txt"]


def _no_partial(directory) -> bool:
    return not [name for name in os.listdir(directory) if ".partial-" in name or name.endswith(".tmp")]


# -- nothing a user made is overwritten without --overwrite --------------------------------------
def test_init_model_refuses_a_non_empty_directory(tmp_path, capsys):
    out = tmp_path / "model"
    _fill(out)
    assert main(["init-model", "--shape", "tiny", str(out)]) == 2
    assert "model: not empty (holds mine.txt); give --overwrite" in error_line(capsys)
    assert _still_mine(out)
    os.makedirs(tmp_path / "empty")  # an empty directory holds nothing to lose
    assert main(["init-model", "--shape", "tiny", str(tmp_path / "empty")]) == 0
    assert main(["init-model", "--shape", "tiny", str(out), "--overwrite"]) == 0
    assert "config.json" in os.listdir(out) and "mine.txt" not in os.listdir(out)  # replaced whole
    assert _no_partial(tmp_path)


def test_convert_refuses_a_non_empty_directory(tiny, tmp_path, capsys):
    _, checkpoint = tiny
    out = tmp_path / "hf"
    _fill(out)
    assert main(["convert", checkpoint, "--to-hf", str(out)]) == 2
    assert "hf: not empty (holds mine.txt); give --overwrite" in error_line(capsys)
    assert _still_mine(out)
    assert main(["convert", checkpoint, "--to-hf", str(out), "--overwrite"]) == 0
    assert "model.safetensors" in os.listdir(out) and "mine.txt" not in os.listdir(out)
    assert main(["convert", str(out), "--to-dcp", str(tmp_path / "hf")]) == 2  # into itself: refused too
    assert _no_partial(tmp_path)


def test_expand_vocab_refuses_a_non_empty_directory(tiny, tmp_path, capsys):
    model, _ = tiny
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("collie\n")
    out = tmp_path / "grown"
    _fill(out)
    assert main(["expand-vocab", model, str(out), "--tokens-file", str(tokens)]) == 2
    assert "grown: not empty (holds mine.txt); give --overwrite" in error_line(capsys)
    assert _still_mine(out)
    assert main(["expand-vocab", model, str(out), "--tokens-file", str(tokens), "--overwrite"]) == 0
    assert "config.json" in os.listdir(out) and "mine.txt" not in os.listdir(out)


# -- tracebacks become one line ------------------------------------------------------------------
def test_malformed_yaml_names_the_file_and_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\nlist: [1, 2\nother: 3\n")
    assert main(["train", str(bad)]) == 2
    assert f"{bad}:3: malformed YAML (while parsing a flow sequence: expected ',' or ']'" in error_line(capsys)
    bad.write_bytes(b"seed: 1\nname: \xff\n")
    assert main(["train", str(bad)]) == 2
    assert f"{bad}:2: not UTF-8 text" in error_line(capsys)
    assert main(["train", str(tmp_path)]) == 2
    assert f"{tmp_path}: a directory, not a config file" in error_line(capsys)


def test_generation_budget_is_checked_against_the_context(tiny, capsys):
    model, _ = tiny
    assert main(["generate", model, "Hello", "--max-new-tokens", "100000000"]) == 2
    assert "--max-new-tokens: 100000000 new tokens after the prompt's" in (err := error_line(capsys))
    assert "exceed the model's context of 4096 positions" in err


def test_convert_of_a_truncated_checkpoint_leaves_nothing(tiny, tmp_path, capsys):
    _, checkpoint = tiny
    damaged = tmp_path / "step-2"
    os.makedirs(damaged)
    for name in os.listdir(checkpoint):
        data = open(os.path.join(checkpoint, name), "rb").read()
        with open(damaged / name, "wb") as f:
            f.write(data[:1000] if name.endswith(".distcp") else data)
    assert main(["convert", str(damaged), "--to-hf", str(tmp_path / "hf")]) == 2
    assert f"{damaged}: the checkpoint is damaged (" in error_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["step-2"]  # no empty or partial output directory


# -- silently accepted becomes refused -----------------------------------------------------------
def test_max_steps_zero_is_refused_and_unset_means_epochs(capsys):
    with pytest.raises(ConfigError, match="max_steps: must be >= 1; leave it out to train train_epochs"):
        CollieConfig.load(None, ["max_steps=0"]).validate()
    assert main(["train", QUICKSTART, "max_steps=0"]) == 2
    assert "max_steps: must be >= 1; leave it out to train train_epochs" in error_line(capsys)
    unset = CollieConfig.load(QUICKSTART)
    unset.validate()
    assert unset.max_steps is None and CollieConfig().max_steps is None


@pytest.mark.parametrize("flags, message", [
    (["--sample", "--top-p", "2"], "--top-p: must be in (0, 1], got 2.0"),
    (["--top-p", "0"], "--top-p: must be in (0, 1], got 0.0"),
    (["--temperature", "-1"], "--temperature: must be > 0 when sampling (>= 0 otherwise), got -1.0"),
    (["--sample", "--temperature", "0"], "--temperature: must be > 0 when sampling"),
    (["--sample", "--temperature", "nan"], "--temperature: must be > 0 when sampling"),
    (["--sample", "--top-k", "-1"], "--top-k: must be >= 0 (0 keeps every token), got -1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1, got 0"),
])
def test_sampling_settings_out_of_range(tmp_path, capsys, flags, message):
    # Checked before the model is looked for: the model directory does not exist.
    assert main(["generate", str(tmp_path / "nope"), "Hello", *flags]) == 2
    assert message in error_line(capsys)


# -- the right noun ------------------------------------------------------------------------------
def test_missing_model_directory_is_named_as_the_model(tiny, tmp_path, capsys):
    nope = str(tmp_path / "nope")
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("collie\n")
    eval_file = f"data.eval_file={TRAIN_FILE}"
    for argv in (["generate", nope, "Hello"], ["eval", nope, QUICKSTART, eval_file, "--out", str(tmp_path / "e.json")],
                 ["expand-vocab", nope, str(tmp_path / "out"), "--tokens-file", str(tokens)],
                 ["train", QUICKSTART, f"model={nope}", "init_shape=null", f"output_dir={tmp_path / 'run'}",
                  f"data.train_file={TRAIN_FILE}"]):
        assert main(argv) == 2
        assert f"model directory not found: '{nope}'" in error_line(capsys), argv
    assert main(["convert", nope, "--to-hf", str(tmp_path / "hf")]) == 2
    assert f"{nope}: not found; give a checkpoint directory" in error_line(capsys)
    assert not os.path.exists(tmp_path / "hf")


def test_data_file_that_is_a_directory_or_not_utf8(tiny, tmp_path, capsys):
    model, _ = tiny
    common = [QUICKSTART, f"model={model}", "init_shape=null", f"output_dir={tmp_path / 'run'}", "data.eval_file=null"]
    assert main(["train", *common, f"data.train_file={tmp_path}"]) == 2
    assert f"{tmp_path}: a directory, not a data file" in error_line(capsys)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    assert main(["train", *common, f"data.train_file={latin1}"]) == 2
    assert f"{latin1}:2: the data file is not UTF-8 text" in error_line(capsys)
    assert main(["expand-vocab", model, str(tmp_path / "out"), "--tokens-file", str(latin1)]) == 2
    assert f"{latin1}:2: the tokens file is not UTF-8 text" in error_line(capsys)


# -- output paths are checked before the work ----------------------------------------------------
def test_eval_out_not_writable_fails_before_evaluating(tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    # The model does not exist: the --out error coming first shows it is checked before anything runs.
    argv = ["eval", str(tmp_path / "nope"), QUICKSTART, f"data.eval_file={TRAIN_FILE}", "--out"]
    assert main([*argv, str(tmp_path / "a_file" / "eval.json")]) == 2
    assert "is not writable (" in error_line(capsys)
    assert main([*argv, str(tmp_path)]) == 2
    assert "is a directory; give a file name" in error_line(capsys)
    if os.getuid() != 0:  # root writes into a read-only directory anyway
        os.makedirs(tmp_path / "ro")
        os.chmod(tmp_path / "ro", 0o500)
        assert main([*argv, str(tmp_path / "ro" / "eval.json")]) == 2
        assert "is not writable (Permission denied)" in error_line(capsys)


# -- adapters record their base by an absolute path; generate takes --base ----------------------
def test_adapters_record_an_absolute_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("base")
    assert base_model_record("base") == str(tmp_path / "base")
    assert base_model_record("s3://bucket/base") == "s3://bucket/base"
    assert base_model_record("org/not-here") == "org/not-here"  # a hub id, as given
    write_checkpoint_record(str(tmp_path), {"type": "lora", "base_model": "base"})
    assert json.loads((tmp_path / CHECKPOINT_RECORD).read_text())["base_model"] == str(tmp_path / "base")


def test_generate_takes_base_for_adapters_whose_base_moved(tiny, tmp_path, capsys):
    model, _ = tiny
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                                LoraConfig(r=2, target_modules=["q_proj"]))
    adapters = str(tmp_path / "adapters")
    peft_model.save_pretrained(adapters)
    config_file = os.path.join(adapters, "adapter_config.json")
    with open(config_file) as f:
        recorded = json.load(f)
    with open(config_file, "w") as f:  # what an adapter made elsewhere records: a base not here
        json.dump({**recorded, "base_model_name_or_path": "runs/elsewhere/base"}, f)
    capsys.readouterr()  # transformers' loading bar
    assert main(["generate", adapters, "Hello", "--max-new-tokens", "2"]) == 2
    assert "name it with --base DIR" in error_line(capsys)
    assert main(["generate", adapters, "Hello", "--max-new-tokens", "2", "--base", model]) == 0
    assert main(["generate", adapters, "Hello", "--base", str(tmp_path / "gone")]) == 2
    assert "--base: base model directory not found" in error_line(capsys)
    assert main(["generate", model, "Hello", "--base", model]) == 2
    assert "is a whole model, not adapters; leave --base out" in error_line(capsys)
    # `collie serve` takes the same --base, checked before anything is served.
    assert main(["serve", adapters, "--base", str(tmp_path / "gone"), "--port", str(free_port())]) == 2
    assert "model directory not found" in error_line(capsys)
    assert main(["serve", model, "--base", model, "--port", str(free_port())]) == 2
    assert "is a whole model, not adapters; leave --base out" in error_line(capsys)


def test_sampling_at_a_vanishing_temperature_is_greedy():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]])
    assert choose_next(logits, True, 1e-300, 0, 1.0, torch.Generator().manual_seed(0)).tolist() == [1, 0]
