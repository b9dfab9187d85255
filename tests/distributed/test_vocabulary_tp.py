"""An expanded vocabulary under tensor parallel (2 processes, gloo)."""

import json
import os
import subprocess
import sys

from helpers import Losses

from collie import CollieConfig
from collie.cli import main
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel, load_tokenizer
from collie.models.vocabulary import expand_vocabulary
from collie.trainer import Trainer

NEW = ["你好", "世界", "训练", "collie", "ωμέγα"]


def test_an_odd_expanded_vocabulary_trains_the_same_under_tensor_parallel(tmp_path):
    """4096 + 5 tokens: DTensor shards the embedding and head unevenly over 2 ranks; the losses
    (labels on the new tokens too) equal one process's in float64."""
    base = str(tmp_path / "base")
    assert main(["init-model", "--shape", "tiny", base]) == 0
    model, tokenizer = CollieModel.from_pretrained(base), load_tokenizer(base)
    assert expand_vocabulary(model, tokenizer, NEW) == 5
    expanded = str(tmp_path / "expanded")
    model.save_pretrained(expanded, tokenizer=tokenizer)
    records = [{"tokens": [1] + [4096 + (i + j) % 5 if j % 2 else (7 * i + j) % 4000 + 3 for j in range(8 + i % 5)]}
               for i in range(16)]
    (tmp_path / "records.json").write_text(json.dumps(records))
    here = os.path.dirname(os.path.abspath(__file__))
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    os.path.join(here, "vocab_worker.py"), expanded, str(tmp_path / "records.json"), str(tmp_path)],
                   check=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=300)
    got = json.loads((tmp_path / "vocab.json").read_text())
    config = CollieConfig.load(None, ["max_steps=4", "logging=[]", "param_dtype=float64", "optimizer.lr=0.01",
                                      "train_micro_batch_size=2"])
    losses = Losses()
    Trainer(CollieModel.from_pretrained(expanded, config=config), config, train_dataset=CollieDatasetForTraining(records),
            callbacks=[losses]).train()
    for name, values in got.items():
        assert max(abs(a - b) for a, b in zip(values, losses.values, strict=True)) <= 1e-9, name
