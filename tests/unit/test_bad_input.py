"""The remaining rows of the bad-input table: each gives a one-line error naming the cause."""

import json

import pytest
from helpers import save_tiny_hf_model, tiny_llama_config

from collie import CollieConfig, ConfigError, LlamaForCausalLM
from collie.config import Layout, ModelFacts
from collie.models.base import CollieModel, load_tokenizer
from collie.models.llama.spec import LLAMA


def test_layouts_the_model_cannot_take():
    dims = LLAMA.dims(tiny_llama_config())  # 4 heads, 2 key/value heads, 2 layers
    with pytest.raises(ConfigError, match=r"tp_size: 4 must divide the attention heads \(4\) and key/value heads \(2\)"):
        Layout.build(CollieConfig(tp_size=4), model=ModelFacts(dims))
    with pytest.raises(ConfigError, match="pp_size: 3 stages but the model has only 2 layers"):
        Layout.build(CollieConfig(pp_size=3), model=ModelFacts(dims))


def test_missing_or_unknown_model_and_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
        load_tokenizer(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        CollieModel.from_pretrained(str(tmp_path))
    save_tiny_hf_model(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["model_type"] = "not_a_model"
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="model_type 'not_a_model' is not supported"):
        CollieModel.from_pretrained(str(tmp_path / "m"))
    # A type transformers knows, whose weights are not in the checkpoint: refused, not warned about.
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, model_type="gpt2")))
    with pytest.raises(ValueError, match="missing keys for a 'gpt2' model: "):
        CollieModel.from_pretrained(str(tmp_path / "m"))
    (tmp_path / "m" / "model.safetensors").unlink()
    (tmp_path / "m" / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(FileNotFoundError, match="no model weights"):
        CollieModel.from_pretrained(str(tmp_path / "m"))


def test_pipeline_stage_partitions():
    from collie.distributed.pipeline import local_stages, stage_layer_ranges

    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=6, vocab_size=4096))
    assert stage_layer_ranges(model, LLAMA, 3, "uniform") == [range(0, 2), range(2, 4), range(4, 6)]
    # The 4096 x 64 embedding and head weigh several layers: their stages get fewer layers.
    balanced = stage_layer_ranges(model, LLAMA, 3, "parameters")
    assert [len(r) for r in balanced] == [1, 4, 1] and balanced[0].start == 0 and balanced[-1].stop == 6
    assert local_stages(1, 2, 6) == [1, 3, 5]
