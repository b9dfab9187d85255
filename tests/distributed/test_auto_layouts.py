"""Any HF causal LM collie has no family for (here Phi-3, through transformers' own class):
data parallel and ZeRO-3 with checkpointing give one process's losses within 1e-9 (float64)
with AdamW, LOMO and LoRA; the export is a transformers model with the same weights; tensor
and pipeline parallel are refused with one line."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from collie import CollieConfig
from collie.config import ConfigError, Layout, ModelFacts
from collie.models.auto.spec import AUTO

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = [{"tokens": [(7 * i + 3 * j) % 250 + 3 for j in range(6 + i % 7)]} for i in range(24)]


def save_tiny_phi3(path: str, vocab_size: int = 256) -> str:
    from transformers import Phi3Config, Phi3ForCausalLM

    torch.manual_seed(0)
    config = Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128, vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2)
    Phi3ForCausalLM(config).save_pretrained(path)
    return path


def test_phi3_under_data_parallel_and_zero3_matches_one_process(tmp_path):
    sys.path.insert(0, HERE)
    from auto_worker import OPTIMIZERS, run

    model_dir = save_tiny_phi3(str(tmp_path / "phi3"))
    records = tmp_path / "records.json"
    records.write_text(json.dumps(RECORDS))
    references = {name: run(model_dir, str(records), ["dp_size=1", *settings],
                            export=str(tmp_path / "single") if name == "adamw" else "")
                  for name, settings in OPTIMIZERS.items()}
    out = tmp_path / "losses.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    os.path.join(HERE, "auto_worker.py"), model_dir, str(records), str(out)],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    losses = json.loads(out.read_text())
    assert len(losses) == 6
    for row, values in losses.items():
        reference = references[row.split("/")[0]]
        assert len(values) == 6 and max(abs(a - b) for a, b in zip(values, reference)) <= 1e-9, (row, values)
    assert references["lomo"] != references["adamw"] != references["lora"]
    expected = load_file(tmp_path / "single" / "model.safetensors")
    for layout in ("dp2", "zero3_dp2"):
        written = load_file(f"{out}.{layout}/model.safetensors")
        assert written.keys() == expected.keys()
        assert all((written[k] - expected[k]).abs().max() <= 1e-9 for k in written), layout


@pytest.mark.parametrize("field", ["tp_size", "pp_size"])
def test_model_parallel_is_refused_in_one_line(field):
    config = CollieConfig(**{field: 2})
    with pytest.raises(ConfigError, match=f"{field}: collie has no model family for 'phi3', so it runs as "
                                          "transformers' own class: data parallel and ZeRO only"):
        Layout.build(config, model=ModelFacts(AUTO.dims(_phi3_config()), AUTO.supports_model_parallel, "phi3"))


def _phi3_config():
    from transformers import Phi3Config

    return Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def test_commands_train_and_generate_with_transformers_own_class(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from collie.cli import main
    from collie.init_model import bundled_tokenizer_path

    root = os.path.dirname(os.path.dirname(HERE))
    model_dir = save_tiny_phi3(str(tmp_path / "phi3"), vocab_size=4096)  # the bundled tokenizer's size
    out = str(tmp_path / "run")
    assert main(["train", os.path.join(root, "examples", "quickstart.yaml"), "init_shape=null", f"model={model_dir}",
                 f"tokenizer={bundled_tokenizer_path()}", f"output_dir={out}", "max_steps=3", "logging=[csv]",
                 "data.eval_file=null", f"data.train_file={os.path.join(root, 'examples', 'data', 'collie_qa.jsonl')}",
                 "checkpointing=true", "optimizer.name=lomo"]) == 0
    final = os.path.join(out, "final")
    prompt = "Question: What is collie?\nAnswer: "
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    expected = AutoModelForCausalLM.from_pretrained(final).generate(ids, attention_mask=torch.ones_like(ids),
                                                                    max_new_tokens=4, do_sample=False,
                                                                    pad_token_id=tokenizer.eos_token_id)
    capsys.readouterr()
    assert main(["generate", final, prompt, "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True) + "\n"
