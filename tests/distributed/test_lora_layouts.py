"""LoRA under every layout, in float64: per-step losses and the exported adapters (peft's
files) equal one process's within 1e-9; a bf16 base with fp32 adapters and QLoRA's 4-bit
base at fp32 precision;
prompt tuning under data and tensor parallel (left padding on tp2: the reference pads right)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import save_tiny_hf_model
from safetensors.torch import load_file

from collie.models.base import CollieModel

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = [{"tokens": [(7 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(24)]
TOLERANCE = 1e-9
# Single-process references: the row's prefix names the one it is compared with.
REFERENCES = {"adamw": [], "lomo": ["optimizer.name=lomo", "optimizer.lr=0.05"], "internlm2": [],
              "bf16": ["param_dtype=bfloat16"]}


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    sys.path.insert(0, HERE)
    import family_layouts
    from lora_worker import PROMPT, QLORA, model_for, run

    root = tmp_path_factory.mktemp("lora_layouts")
    model_dir = save_tiny_hf_model(str(root / "seed"))
    CollieModel.from_config(family_layouts.FAMILIES["internlm2"], seed=1).save_pretrained(model_dir + "_internlm2")
    records = root / "records.json"
    records.write_text(json.dumps(RECORDS))
    references = {name: run(model_for(model_dir, f"{name}/"), str(records), ["dp_size=1", *overrides],
                            export=str(root / f"single-{name}"))
                  for name, overrides in {**REFERENCES, "prompt": PROMPT, "qlora": QLORA}.items()}
    return root, model_dir, str(records), references


def _reference(row: str) -> str:
    prefix = row.split("/")[0]
    return prefix if prefix in (*REFERENCES, "prompt", "qlora") else "adamw"


def _check(seed, nproc: int) -> None:
    from lora_worker import LAYOUTS, LAYOUTS_4

    root, model_dir, records, references = seed
    out = root / f"losses{nproc}.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    os.path.join(HERE, "lora_worker.py"), model_dir, records, str(out)],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    losses = json.loads(out.read_text())
    assert set(losses) == set(LAYOUTS_4 if nproc == 4 else LAYOUTS)
    for row, values in losses.items():
        reference = _reference(row)
        # A bf16 or 4-bit base computes in fp32 here: fp32 reduction order differs between layouts.
        fp32 = reference in ("bf16", "qlora")
        tolerance = 1e-4 if fp32 else TOLERANCE
        assert len(values) == 8
        assert max(abs(a - b) for a, b in zip(values, references[reference])) <= tolerance, (row, values)
        expected = load_file(root / f"single-{reference}" / "adapter_model.safetensors")
        written = load_file(f"{out}.{row.replace('/', '-')}/adapter_model.safetensors")
        assert written.keys() == expected.keys(), row
        for key, tensor in written.items():
            assert tensor.dtype == (torch.float32 if fp32 else torch.float64), (row, key)
            # AdamW amplifies fp32 rounding in its parameters: those are compared in float64 only.
            if not fp32:
                assert (tensor - expected[key]).abs().max() <= TOLERANCE, (row, key)
        assert _adapter_config(f"{out}.{row.replace('/', '-')}") == _adapter_config(root / f"single-{reference}"), row


def _adapter_config(path) -> dict:
    with open(os.path.join(path, "adapter_config.json")) as f:
        config = json.load(f)
    if "target_modules" in config:
        config["target_modules"] = sorted(config["target_modules"])  # peft writes a set
    return config


def test_lora_two_process_layouts_match_single_process(seed):
    _check(seed, 2)


def test_lora_four_process_layouts_match_single_process(seed):
    _check(seed, 4)


def test_adapters_moved_and_base_frozen(seed):
    """The references trained the adapters only: their B left zero, the base untouched."""
    root, model_dir, _, _ = seed
    trained = load_file(root / "single-adamw" / "adapter_model.safetensors")
    assert len(trained) == 2 * 2 * 4  # 2 layers × (q, v, o, down) × (A, B)
    assert all(t.abs().max() > 0 for t in trained.values())
    assert not os.path.exists(root / "single-adamw" / "model.safetensors")
