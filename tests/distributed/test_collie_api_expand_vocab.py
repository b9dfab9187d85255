"""CoLLiE's vocabulary expansion for further pre-training.

The example runs as written on 4 processes (its hub id resolves to a tiny LLaMA in a local Hugging
Face cache; a SentencePiece model is trained here on the repo's Chinese fixture), scaled from
pp 2 × tp 4 to pp 2 × tp 2, with smaller batches and 2 epochs: every piece of the SentencePiece
model is one token of the saved tokenizer, the embedding and head grew to its length, only they
trained (the blocks are bit for bit the checkpoint's), the new rows learnt, and the loss the CSV
monitor wrote is finite and falls.

Under a multi-process launch the model is still empty when the example grows it: the growth is
recorded and the checkpoint's rows are grown as they are read (checked here in one process
against growing a loaded model).
"""

import csv
import glob
import json
import math
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from helpers import hub_cache_with
from safetensors.torch import load_file
from transformers import AutoTokenizer

from collie.config import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.models.vocabulary import resize_vocabulary

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "collie_api", "further_pretrain_llama", "expand_vocab.py")
FIXTURE = os.path.join(ROOT, "examples", "further_pretraining", "fixture.jsonl")
HUB_ID = "decapoda-research/llama-7b-hf"
EDGES = ("model.embed_tokens.weight", "lm_head.weight")


def test_the_example_merges_a_sentencepiece_model_and_trains_the_grown_edges_under_pp2_tp2(tmp_path):
    snapshot = hub_cache_with(tmp_path / "hf", HUB_ID, "llama")
    pieces = train_sentencepiece(tmp_path / "chinese_sp")
    script = open(EXAMPLE).read()
    for old, new in (("config.tp_size = 4", "config.tp_size = 2"),
                     ("config.train_micro_batch_size = 8", "config.train_micro_batch_size = 2"),
                     ("config.gradient_accumulation_steps = 16", "config.gradient_accumulation_steps = 2"),
                     ("config.train_epochs = 5000", "config.train_epochs = 2"),
                     ('data_files = "examples/further_pretraining/fixture.jsonl"', f"data_files = {FIXTURE!r}")):
        assert old in script, old
        script = script.replace(old, new)
    (tmp_path / "expand_vocab.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_CACHE=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
                          "expand_vocab.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]

    out = tmp_path / "further_pretrained"
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) > 4096 and f"the vocabulary has {len(tokenizer)} tokens" in run.stdout
    for piece in pieces:
        assert len(tokenizer(piece, add_special_tokens=False).input_ids) == 1, piece
    assert json.loads((out / "config.json").read_text())["vocab_size"] == len(tokenizer)
    trained, original = load_file(out / "model.safetensors"), load_file(os.path.join(snapshot, "model.safetensors"))
    for name, tensor in original.items():
        if name in EDGES:
            assert trained[name].shape == (len(tokenizer), tensor.shape[1]), name
            new_rows = trained[name][tensor.shape[0]:]
            assert new_rows.std(dim=0).mean() > 1e-5, name  # they start equal (the mean row) and learnt apart
        else:
            assert torch.equal(trained[name], tensor), name  # frozen, under pipeline and tensor parallel

    (metrics,) = glob.glob(str(tmp_path / "ds_logs" / "further_pretrain_llama*" / "metrics.csv"))
    rows = list(csv.DictReader(open(metrics)))
    losses = [float(row["loss"]) for row in rows]
    assert len(losses) == 6 and all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert [row["step"] for row in rows if row["ppl"]] == ["3", "6"]  # evaluated after each epoch


def train_sentencepiece(prefix) -> list[str]:
    """A SentencePiece model of the fixture's Chinese text at `prefix`.model; returns its pieces as
    the example merges them (without the word-start mark)."""
    texts = [json.loads(line)["text"] for line in open(FIXTURE, encoding="utf-8")]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_prefix=str(prefix), vocab_size=200,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    model = spm.SentencePieceProcessor(model_file=f"{prefix}.model")
    pieces = [model.id_to_piece(i).replace("▁", "") for i in range(model.get_piece_size())
              if not (model.is_control(i) or model.is_unknown(i))]
    assert sum(len(piece) > 1 for piece in pieces) > 10  # words, not only characters
    return [piece for piece in pieces if piece]


def test_an_empty_model_grown_before_loading_equals_a_loaded_model_grown(tmp_path, monkeypatch):
    snapshot = hub_cache_with(tmp_path / "hf", HUB_ID, "llama")
    loaded = CollieModel.from_pretrained(snapshot)
    resize_vocabulary(loaded, 4103)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a multi-process launch: from_pretrained leaves the model empty
    empty = CollieModel.from_pretrained(snapshot, config=CollieConfig())
    assert all(p.is_meta for p in empty.parameters())
    empty.resize_token_embeddings(4103)
    assert empty.get_input_embedding()[1].weight.shape == (4103, 128) and empty.config.vocab_size == 4103
    empty.to_empty(device="cpu")
    empty.load_hf_weights(snapshot)
    expected = loaded.state_dict()
    assert all(torch.equal(tensor, expected[name]) for name, tensor in empty.state_dict().items())

    # Only the rows the model grew from are grown on load: another size is still a mismatch.
    other = CollieModel.from_pretrained(snapshot, config=CollieConfig())
    other.resize_token_embeddings(4103)
    other.vocab_grown_from = 4000
    other.to_empty(device="cpu")
    with pytest.raises(ValueError, match=r"has shape \(4096, 128\), the model expects \(4103, 128\)"):
        other.load_hf_weights(snapshot)


def test_a_text_that_spells_out_eos_ends_with_one(bundled_tokenizer):
    """CoLLiE's script appends "</s>" to each text itself; collie's dataset, which ends texts and
    answers with eos, then adds no second one."""
    tokenizer = bundled_tokenizer
    eos = tokenizer.eos_token_id
    dataset = CollieDatasetForTraining([{"text": "中国有很长的历史" + tokenizer.eos_token}, {"text": "中国有很长的历史"},
                                        {"input": "问:", "output": "好" + tokenizer.eos_token}], tokenizer)
    assert dataset[0] == dataset[1] and dataset[0]["input_ids"][-2:] != [eos, eos] and dataset[0]["input_ids"][-1] == eos
    assert dataset[2]["input_ids"][-1] == eos and dataset[2]["input_ids"][-2] != eos
