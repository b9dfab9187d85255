"""Parity across parallel layouts in float64 (gloo; one launch of 2 processes and one of 4)."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from helpers import save_tiny_hf_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from collie.models.base import CollieModel

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = [{"tokens": [(7 * i + 3 * j) % 250 + 1 for j in range(6 + i % 7)]} for i in range(24)]


TOLERANCE = 1e-9  # float64: reduction-order rounding is ~1e-15, a real difference is far larger


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    sys.path.insert(0, HERE)
    root = tmp_path_factory.mktemp("layouts")
    model_dir = save_tiny_hf_model(str(root / "seed"), num_hidden_layers=4)  # 4 stages for interleaving
    records = root / "records.json"
    records.write_text(json.dumps(RECORDS))
    import family_layouts
    from layout_worker import (
        EVALS,
        FP32,
        IN_BACKWARD,
        MODEL_REFERENCE,
        PREFERENCE,
        SmoothedLoss,
        fused_qkv_format,
        run,
        run_preference,
    )

    with fused_qkv_format():
        CollieModel.from_pretrained(model_dir).save_pretrained(model_dir + "_fused_qkv")

    # Single-process references, and the model a single process exports.
    references = {"adamw": run(model_dir, str(records), ["dp_size=1"], export=str(root / "single"))}
    references["eval"] = EVALS[str(root / "single")]
    for optimizer, settings in IN_BACKWARD.items():
        references[optimizer] = run(model_dir, str(records), ["dp_size=1", *settings])
    references["fp32"] = run(model_dir, str(records), ["dp_size=1", FP32])
    references["user_loss"] = run(model_dir, str(records), ["dp_size=1"], loss_fn=SmoothedLoss())
    for name, settings in PREFERENCE.items():
        references[f"preference/{name}"] = run_preference(model_dir, ["dp_size=1", *settings],
                                                          str(root / f"preference-{name.replace('/', '-')}"))
    # The frozen copy as the reference gives what the precomputed pass gives.
    model_reference = run_preference(model_dir, ["dp_size=1", *PREFERENCE["dpo/adamw"], MODEL_REFERENCE],
                                     str(root / "preference-model-reference"))
    assert _max_diff(model_reference["loss"], references["preference/dpo/adamw"]["loss"], 6) <= TOLERANCE
    family_layouts.write_family_seeds(model_dir)
    family_layouts.write_family_records(str(records))
    for family in family_layouts.FAMILIES:
        for optimizer, settings in family_layouts.OPTIMIZERS.items():
            references[f"{family}/{optimizer}"] = run(family_layouts.seed_dir(model_dir, family),
                                                      family_layouts.records_for(family, str(records)),
                                                      ["dp_size=1", *settings])
    return root, model_dir, str(records), references


def _max_diff(values: list[float], reference: list[float], steps: int = 10) -> float:
    assert len(values) == len(reference) == steps, (len(values), len(reference))
    return max(abs(a - b) for a, b in zip(values, reference))


def _check_preference(losses: dict, references: dict, layouts: tuple[str, ...], model_reference_layouts: tuple[str, ...]):
    """Preference training: each layout's pair losses, and the rewards the monitors report,
    equal the single process's; step 1 of DPO (reference = the initial model) is ln 2."""
    from layout_worker import PREFERENCE

    runs = [(f"{name}/{layout}", name) for name in PREFERENCE for layout in layouts]
    runs += [(f"dpo/adamw/model_reference/{layout}", "dpo/adamw") for layout in model_reference_layouts]
    for key, name in runs:
        result, reference = losses.pop(f"preference/{key}"), references[f"preference/{name}"]
        for column in ("loss", "reward_margin", "reward_accuracy", "rewards_chosen"):
            assert _max_diff(result[column], reference[column], 6) <= TOLERANCE, (key, column)
        assert _max_diff(result["eval"], reference["eval"], 5) <= TOLERANCE, (key, "eval")
    assert references["preference/dpo/adamw"]["loss"][0] == pytest.approx(math.log(2), abs=1e-12)
    assert references["preference/dpo/lomo"]["reward_margin"][-1] > 0.1  # it learned to prefer


def _check(seed, nproc, layouts, in_backward_layouts, fp32_layouts=(), fused_layouts=(), user_loss_layouts=(),
           preference_layouts=(), model_reference_layouts=()):
    import family_layouts
    from layout_worker import IN_BACKWARD

    root, model_dir, records, references = seed
    out = root / f"losses{nproc}.json"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    os.path.join(HERE, "layout_worker.py"), model_dir, records, str(out)],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    losses = json.loads(out.read_text())
    _check_preference(losses, references, preference_layouts, model_reference_layouts)
    # LOMO/AdaLomo, with and without clipping: averaged over dp replicas, updated on FSDP
    # shards and pipeline stages, global norms and RMS over tensor-parallel shards. The
    # single-process runs update (tests/unit prove LOMO == SGD and AdaLomo == its reference),
    # so a layout that failed to update would fail this parity check.
    for optimizer in IN_BACKWARD:
        for layout in in_backward_layouts:
            values = losses.pop(f"{optimizer}/{layout}")
            assert _max_diff(values, references[optimizer]) <= TOLERANCE, (optimizer, layout)
    # The float32 path: losses only. fp32 reduction order differs between layouts and AdamW
    # amplifies it in near-zero gradients, so parameters are compared in float64 above.
    for layout in fp32_layouts:
        assert _max_diff(losses.pop(f"fp32/{layout}"), references["fp32"]) <= 1e-4, layout
    # A user's loss_fn is what the pipeline's last stage computes (its values differ from collie's).
    for layout in user_loss_layouts:
        values = losses.pop(f"user_loss/{layout}")
        assert _max_diff(values, references["user_loss"]) <= TOLERANCE, layout
        assert _max_diff(values, references["adamw"]) > 1e-3, layout
    # Loaded from a checkpoint that fuses q/k/v: split on load, each rank keeping its shards.
    for layout in fused_layouts:
        assert _max_diff(losses.pop(f"fused_qkv/{layout}"), references["adamw"]) <= TOLERANCE, layout
    # Every other family on the core layouts.
    if nproc == 2:
        for family in family_layouts.FAMILIES:
            for layout in family_layouts.LAYOUTS:
                for optimizer in family_layouts.OPTIMIZERS:
                    values = losses.pop(f"{family}/{layout}/{optimizer}")
                    assert _max_diff(values, references[f"{family}/{optimizer}"]) <= TOLERANCE, (family, layout)
    # Evaluation and generation from every layout (across stages under pipeline parallel).
    for name in layouts:
        evaluation = losses.pop(f"eval/{name}")
        assert abs(evaluation["ppl"] - references["eval"]["ppl"]) <= TOLERANCE * references["eval"]["ppl"], name
        # Token-by-token decoding cannot split the sequence: sequence-parallel layouts skip it.
        assert ("tokens" in evaluation) != ("sequence_parallel=true" in layouts[name]), name
        if "tokens" in evaluation:
            assert evaluation["tokens"] == references["eval"]["tokens"], name
        # Classification by option likelihood: the same prediction for every item.
        assert evaluation["classes"] == references["eval"]["classes"], name
    assert set(losses) == set(layouts)
    for name, values in losses.items():
        assert _max_diff(values, references["adamw"]) <= TOLERANCE, (name, values)

    # Every layout exports one HF model: final parameters equal the single process's within
    # 1e-9, and transformers loads it with the same logits.
    expected_weights = load_file(root / "single" / "model.safetensors")
    expected = AutoModelForCausalLM.from_pretrained(root / "single").eval()
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in layouts:
            weights = load_file(f"{out}.{name}/model.safetensors")
            assert weights.keys() == expected_weights.keys(), name
            for key, tensor in weights.items():
                assert tensor.dtype == torch.float64, (name, key)
                assert (tensor - expected_weights[key]).abs().max() <= TOLERANCE, (name, key)
            exported = AutoModelForCausalLM.from_pretrained(f"{out}.{name}").eval()
            assert (exported(ids).logits - expected(ids).logits).abs().max() <= TOLERANCE, name


def test_two_process_layouts_match_single_process(seed):
    from layout_worker import (
        FP32_LAYOUTS,
        FUSED_LAYOUTS,
        IN_BACKWARD_LAYOUTS,
        LAYOUTS,
        MODEL_REFERENCE_LAYOUTS,
        PREFERENCE_LAYOUTS,
        USER_LOSS_LAYOUTS,
    )

    _check(seed, 2, LAYOUTS, IN_BACKWARD_LAYOUTS, FP32_LAYOUTS, FUSED_LAYOUTS, USER_LOSS_LAYOUTS, PREFERENCE_LAYOUTS,
           MODEL_REFERENCE_LAYOUTS)


def test_four_process_layouts_match_single_process(seed):
    from layout_worker import IN_BACKWARD_LAYOUTS_4, LAYOUTS_4, PREFERENCE_LAYOUTS_4

    _check(seed, 4, LAYOUTS_4, IN_BACKWARD_LAYOUTS_4, preference_layouts=PREFERENCE_LAYOUTS_4)


def test_two_nodes_with_c10d_rendezvous(seed):
    """Two launchers (`--nnodes=2 --node_rank=i`), one process each, meeting through torchrun's
    c10d rendezvous on localhost: the multi-node path, reaching the single-process losses."""
    import socket

    root, model_dir, records, references = seed
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = root / "two_nodes.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launchers = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={i}",
                                   "--nproc_per_node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
                                   "--rdzv-id=collie-two-nodes", os.path.join(HERE, "layout_worker.py"), model_dir,
                                   records, str(out), "dp2_left,zero3_dp2"], env=env)
                 for i in range(2)]
    assert [p.wait(timeout=300) for p in launchers] == [0, 0]
    losses = json.loads(out.read_text())
    for name in ("dp2_left", "zero3_dp2"):
        assert _max_diff(losses[name], references["adamw"]) <= TOLERANCE, name
