"""CoLLiE's names for the data classes, the model classes, `collie.module`, `collie.log` and
`collie.driver`, on collie's engine: each works with CoLLiE's signature and meaning, or refuses
in one line."""

import importlib
import io
import json
import logging
import os

import pytest
import torch
import torch.distributed as dist
from helpers import tiny_llama_config
from safetensors.torch import load_file

from collie.config import CollieConfig
from collie.data import (
    CollieBatchSampler,
    CollieDataLoader,
    CollieDatasetForClassification,
    CollieDatasetForPerplexity,
    CollieDatasetForTraining,
    ColliePadder,
    DataError,
)
from collie.driver import FileIODriver, IODriver, PetrelIODriver
from collie.models.chatglm.config import ChatGLMv1Config
from collie.models.chatglm2.config import ChatGLMConfig
from collie.models.internlm.config import InternLMConfig
from collie.models.internlm2.config import InternLM2Config
from collie.models.moss.config import MossConfig

NAMES = {
    "collie.data": ["CollieDataLoader", "CollieBatchSampler", "CollieDatasetForTraining", "CollieDatasetForClassification",
                    "CollieDatasetForGeneration", "CollieDatasetForPerplexity"],
    "collie.models": ["LlamaForCausalLM", "MossForCausalLM", "ChatGLMForCausalLM", "CollieModelForCausalLM",
                      "InternLMForCausalLM", "ChatGLM2ForCausalLM", "Moss003MoonForCausalLM", "InternLM2ForCausalLM"],
    "collie.models.base": ["CollieModelForCausalLM"],
    "collie.models.llama": ["LlamaForCausalLM", "LlamaLayer"],
    "collie.models.llama.model": ["LlamaForCausalLM", "LlamaLayer"],
    "collie.models.moss": ["MossForCausalLM"],
    "collie.models.moss_moon": ["Moss003MoonForCausalLM"],
    "collie.models.internlm": ["InternLMForCausalLM", "InternLMLayer"],
    "collie.models.internlm2": ["InternLM2ForCausalLM"],
    "collie.models.chatglm": ["ChatGLMForCausalLM"],
    "collie.models.chatglm2": ["ChatGLM2ForCausalLM"],
    "collie.module": ["ColumnParallelLinearWithoutBias", "ColumnParallelLMHead", "RowParallelLinearWithoutBias",
                      "GPTLMLoss", "PipelineGenerationMixin", "ColumnParallelLinear", "RowParallelLinear",
                      "VocabParallelEmbedding", "LinearWithHiddenStates"],
    "collie.utils.padder": ["ColliePadder"],
    "collie.log": ["logger", "print"],
    "collie.driver": ["IODriver", "FileIODriver", "PetrelIODriver"],
    "collie.driver.io": ["IODriver", "FileIODriver", "PetrelIODriver"],
}


@pytest.mark.parametrize("module", sorted(NAMES))
def test_every_name_imports(module):
    imported = importlib.import_module(module)
    for name in NAMES[module]:
        assert getattr(imported, name) is not None
        assert name in dir(imported)


def test_family_class_names_are_collie_classes():
    from collie.models import CollieModel, CollieModelForCausalLM, LlamaForCausalLM
    from collie.models.internlm import InternLMLayer
    from collie.models.llama import LlamaLayer
    from collie.models.moss import MossForCausalLM
    from collie.models.moss_moon import Moss003MoonForCausalLM

    assert CollieModelForCausalLM is CollieModel and Moss003MoonForCausalLM is MossForCausalLM
    assert importlib.import_module("collie.models.llama").LlamaForCausalLM is LlamaForCausalLM
    assert InternLMLayer is LlamaLayer
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        importlib.import_module("collie.models.llama").Nope


def _tiny(family: str):
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256,
                 max_position_embeddings=256, rms_norm_eps=1e-6)
    return {
        "llama": lambda: tiny_llama_config(),
        "internlm": lambda: InternLMConfig(bias=True, **shape),
        "internlm2": lambda: InternLM2Config(num_key_value_heads=2, bias=False, **shape),
        "chatglm2": lambda: ChatGLMConfig(num_layers=2, padded_vocab_size=256, hidden_size=64, ffn_hidden_size=128,
                                          kv_channels=16, num_attention_heads=4, multi_query_group_num=2),
        "chatglm": lambda: ChatGLMv1Config(vocab_size=256, hidden_size=64, num_layers=2, num_attention_heads=4,
                                           inner_hidden_size=128, max_sequence_length=256, bos_token_id=251,
                                           gmask_token_id=252, mask_token_id=253, eos_token_id=2, pad_token_id=0),
        "moss": lambda: MossConfig(vocab_size=256, n_positions=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                   n_inner=128),
    }[family]()


# (CoLLiE's module, class name, family config, a tensor name of the family's published checkpoints)
CLASSES = [
    ("collie.models.llama", "LlamaForCausalLM", "llama", "model.layers.0.self_attn.q_proj.weight"),
    ("collie.models.internlm", "InternLMForCausalLM", "internlm", "model.layers.0.self_attn.q_proj.bias"),
    ("collie.models.internlm2", "InternLM2ForCausalLM", "internlm2", "model.layers.0.attention.wqkv.weight"),
    ("collie.models.chatglm2", "ChatGLM2ForCausalLM", "chatglm2",
     "transformer.encoder.layers.0.self_attention.query_key_value.weight"),
    ("collie.models.chatglm", "ChatGLMForCausalLM", "chatglm", "transformer.layers.0.attention.query_key_value.weight"),
    ("collie.models.moss", "MossForCausalLM", "moss", "transformer.h.0.attn.qkv_proj.weight"),
    ("collie.models.moss_moon", "Moss003MoonForCausalLM", "moss", "transformer.h.0.attn.qkv_proj.weight"),
]


@pytest.mark.parametrize("module,name,family,tensor", CLASSES, ids=[c[1] for c in CLASSES])
def test_family_class_builds_saves_and_loads_as_collie_did(module, name, family, tensor, tmp_path):
    cls = getattr(importlib.import_module(module), name)
    model = cls.from_config(CollieConfig(model_config=_tiny(family), seed=3))
    assert isinstance(model, cls)
    model.save_pretrained(str(tmp_path))
    assert tensor in load_file(tmp_path / "model.safetensors")  # the family's published layout
    ids = torch.tensor([[5, 6, 7, 252, 251, 8, 9]])
    expected = model(ids).logits
    for config in (CollieConfig.from_pretrained(str(tmp_path)), str(tmp_path)):  # CoLLiE takes either
        loaded = cls.from_pretrained(str(tmp_path), config=config)
        assert type(loaded) is type(model)
        assert torch.equal(loaded(ids).logits, expected)
    from_dir = cls.from_config(str(tmp_path))  # CoLLiE's from_config(path): a random model of that config
    assert type(from_dir) is type(model)


def test_a_family_class_refuses_another_familys_checkpoint(tmp_path):
    from collie.models import InternLMForCausalLM, LlamaForCausalLM

    LlamaForCausalLM.from_config(tiny_llama_config()).save_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="holds a 'llama' model, not a InternLMForCausalLM"):
        InternLMForCausalLM.from_pretrained(str(tmp_path), config=CollieConfig.from_pretrained(str(tmp_path)))


def test_from_pretrained_keywords_beside_a_collie_config(tmp_path):
    """CoLLiE's `from_pretrained(path, config, use_cache=True)`: model fields set; a CollieConfig
    setting given there is one line."""
    from collie.models import LlamaForCausalLM

    LlamaForCausalLM.from_config(tiny_llama_config()).save_pretrained(str(tmp_path))
    config = CollieConfig.from_pretrained(str(tmp_path))
    model = LlamaForCausalLM.from_pretrained(str(tmp_path), config, use_cache=False, process_exclusion=True)
    assert model.config.use_cache is False
    with pytest.raises(TypeError, match="'seed' is a CollieConfig setting"):
        LlamaForCausalLM.from_pretrained(str(tmp_path), config, seed=3)


# -- data --------------------------------------------------------------------


def test_raw_tensor_records_give_the_batches_and_loss_of_their_text_records(bundled_tokenizer):
    from collie.models import LlamaForCausalLM
    from collie.module import GPTLMLoss

    tok = bundled_tokenizer
    text = CollieDatasetForTraining([{"text": "a short line"}, {"input": "Question: hi\nAnswer: ", "output": "hello"},
                                     {"text": "one more line of words here"}], tok)
    raw = []
    for i, item in enumerate(text):
        ids, labels = torch.tensor(item["input_ids"]), torch.tensor(item["labels"])
        if i == 1:  # left-padded, as a tokenizer's batch gives it: the mask's zeros are padding
            ids, labels = torch.cat([torch.full((3,), 99), ids]), torch.cat([torch.full((3,), -100), labels])
            raw.append({"input_ids": ids, "labels": labels, "attention_mask": (torch.arange(len(ids)) >= 3).long()})
        else:
            raw.append({"input_ids": ids.unsqueeze(0) if i == 2 else ids, "labels": labels.tolist()})
    tensors = CollieDatasetForTraining(raw)  # no tokenizer needed
    assert [tensors[i] for i in range(3)] == [text[i] for i in range(3)]
    padder = ColliePadder(tok.pad_token_id or 0)
    batch, same = padder([text[i] for i in range(3)]), padder([tensors[i] for i in range(3)])
    assert all(torch.equal(batch[k], same[k]) for k in ("input_ids", "attention_mask", "labels"))
    model = LlamaForCausalLM.from_config(tiny_llama_config(vocab_size=len(tok)))
    losses = [GPTLMLoss()(model(b["input_ids"], b["attention_mask"]).logits, b["labels"]) for b in (batch, same)]
    assert torch.equal(losses[0], losses[1])
    with pytest.raises(DataError, match="record 0: 'attention_mask' must be 0/1 for each of the 2 tokens"):
        CollieDatasetForTraining([{"input_ids": [1, 2], "attention_mask": [1]}])
    with pytest.raises(DataError, match="record 0: 'input_ids' must hold integer token ids"):
        CollieDatasetForTraining([{"input_ids": [1.5, 2]}])


def test_collie_dataset_arguments(bundled_tokenizer, tmp_path):
    records = [{"tokens": [i, i + 1]} for i in range(10)]
    shuffled = CollieDatasetForTraining(records, None, True, True, 7, -1)  # CoLLiE's positional order
    assert sorted(shuffled[i]["input_ids"][0] for i in range(10)) == list(range(10))
    assert [shuffled[i]["input_ids"][0] for i in range(10)] != list(range(10))
    assert [shuffled[i] for i in range(10)] == [CollieDatasetForTraining(records, shuffle=True, seed=7)[i]
                                                for i in range(10)]
    plain = CollieDatasetForTraining([{"text": "word"}], bundled_tokenizer, add_special_tokens=False, add_eos=False)
    assert plain[0]["input_ids"] == bundled_tokenizer("word", add_special_tokens=False)["input_ids"]
    assert isinstance(CollieDatasetForPerplexity(records), CollieDatasetForTraining)
    path = tmp_path / "records.json"
    path.write_text(json.dumps(records))
    assert CollieDatasetForTraining.from_json(str(path), shuffle=True, seed=7)[0] == shuffled[0]


def test_classification_takes_collies_record_format(bundled_tokenizer):
    collie_form = CollieDatasetForClassification([{"input": "Is it good? ", "output": ["no", "yes"], "target": 1}],
                                                 bundled_tokenizer)
    ours = CollieDatasetForClassification([{"input": "Is it good? ", "options": ["no", "yes"], "target": 1}],
                                          bundled_tokenizer)
    assert collie_form[0] == ours[0] and collie_form[0]["target"] == 1 and len(collie_form[0]["options"]) == 2
    with pytest.raises(DataError, match="'target' must be the index of the right option"):
        CollieDatasetForClassification([{"input": "x", "output": ["a", "b"], "target": 2}], bundled_tokenizer)
    with pytest.raises(ValueError, match="style: 'helm' is not supported"):
        CollieDatasetForClassification([{"input": "x", "output": ["a", "b"], "target": 0}], bundled_tokenizer,
                                       style="helm")


def test_collie_padder_signatures():
    items = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": torch.tensor([4]), "labels": torch.tensor([4])}]
    left = ColliePadder(padding_token_id={"input_ids": 7, "attention_mask": 0, "labels": -100}, padding_left=True)(items)
    assert left["input_ids"].tolist() == [[1, 2, 3], [7, 7, 4]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ColliePadder({"input_ids": 7}, True)(items)["input_ids"].tolist() == [[1, 2, 3], [7, 7, 4]]
    assert ColliePadder()(items)["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert ColliePadder(5, padding_side="left").padding_side == "left"
    with pytest.raises(ValueError, match="'labels' is always padded with -100 in collie, not 0"):
        ColliePadder(padding_token_id={"labels": 0})


def test_collie_data_loader_keeps_the_last_partial_batch_and_pads_left():
    dataset = CollieDatasetForTraining([{"tokens": list(range(1, i + 2))} for i in range(5)])
    loader = CollieDataLoader(dataset, batch_size=2, collate_fn=ColliePadder(0, padding_left=True))
    batches = list(loader)
    assert len(loader) == 3 and [len(b["input_ids"]) for b in batches] == [2, 2, 1]
    assert sorted(row[-1] for b in batches for row in b["input_ids"].tolist()) == [1, 2, 3, 4, 5]
    assert batches[0]["input_ids"].tolist() == [[0, 1], [1, 2]]  # padded on the left
    assert [len(b["input_ids"]) for b in CollieDataLoader(dataset, batch_size=2, drop_last=True)] == [2, 2]
    assert CollieDataLoader(dataset, 2).collate_fn.padding_side == "right"  # a ColliePadder by default


def test_collie_data_loader_shares_samples_over_data_parallel_ranks():
    dataset = CollieDatasetForTraining([{"tokens": [i + 1]} for i in range(5)])
    ranks = [[row[0] for b in CollieDataLoader(dataset, 2, shuffle=True, dp_rank=r, dp_size=2) for row in b["input_ids"].tolist()]
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3  # the 5th sample's rank partner repeats the epoch's first
    assert set(ranks[0]) | set(ranks[1]) == {1, 2, 3, 4, 5}
    with pytest.raises(ValueError, match="dp_rank: 2 is not in 0..1"):
        CollieDataLoader(dataset, 2, dp_rank=2, dp_size=2)


def test_collie_data_loader_asks_for_the_data_parallel_place_under_torch_distributed(tmp_path):
    dataset = CollieDatasetForTraining([{"tokens": [1]}])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="pass both dp_rank= and dp_size="):
            CollieDataLoader(dataset, 1)
    finally:
        dist.destroy_process_group()


def test_collie_batch_sampler_last_batch_modes():
    assert list(CollieBatchSampler(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(CollieBatchSampler(range(5), 2, "drop")) == [[0, 1], [2, 3]]
    assert list(CollieBatchSampler(range(5), 2, "fill")) == [[0, 1], [2, 3], [4, 0]]
    assert len(CollieBatchSampler(range(5), 2)) == 3
    with pytest.raises(ValueError, match="last_batch: 'pad' is not one of normal, drop, fill"):
        CollieBatchSampler(range(5), 2, "pad")


def test_collie_data_loader_refuses_curriculum_learning():
    dataset = CollieDatasetForTraining([{"tokens": [1]}])
    with pytest.raises(ValueError, match="DeepSpeed's curriculum learning is not supported"):
        CollieDataLoader(dataset, 1, data_efficiency_config={"data_sampling": {}})


# -- collie.module, collie.log, collie.driver -----------------------------------------


@pytest.mark.parametrize("name", ["ColumnParallelLinear", "RowParallelLinear", "VocabParallelEmbedding",
                                  "ColumnParallelLinearWithoutBias", "RowParallelLinearWithoutBias",
                                  "LinearWithHiddenStates", "ColumnParallelLMHead"])
def test_megatron_layers_refuse_in_one_line(name):
    cls = getattr(importlib.import_module("collie.module"), name)
    with pytest.raises(NotImplementedError, match=f"^{name}: collie applies tensor parallelism from outside with "
                                                   "DTensor; use a plain nn.(Linear|Embedding) and set tp_size$"):
        cls(64, 64, bias=False)


def test_gpt_lm_loss_and_generation_mixin():
    from collie.models import LlamaForCausalLM
    from collie.models.loss import causal_lm_loss
    from collie.module import GPTLMLoss, PipelineGenerationMixin

    logits, labels = torch.randn(2, 5, 11), torch.tensor([[1, 2, 3, -100, 4], [5, 6, 7, 8, 9]])
    assert torch.equal(GPTLMLoss(ignore_index=-100)(logits, labels), causal_lm_loss(logits, labels))
    model = LlamaForCausalLM.from_config(tiny_llama_config())
    assert isinstance(model, PipelineGenerationMixin)
    assert model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=2).shape == (1, 5)


def test_log_print_goes_through_collies_logger(caplog, capsys):
    from collie.log import logger
    from collie.log import print as collie_print

    assert logger is logging.getLogger("collie")
    collie_print("no", "handler", 1)  # nothing shows collie's INFO lines: printed instead
    assert capsys.readouterr().out == "no handler 1\n"
    with caplog.at_level(logging.INFO, logger="collie"):
        collie_print("a", 2, sep="-")
    assert [r.getMessage() for r in caplog.records if r.name == "collie"] == ["a-2"]


def test_file_io_driver_round_trip(tmp_path):
    root = str(tmp_path / "io")
    FileIODriver.save("line 1\n", f"{root}/a/log.txt")
    FileIODriver.save("line 2\n", f"{root}/a/log.txt", append=True)
    assert FileIODriver.load(f"{root}/a/log.txt", mode="r") == "line 1\nline 2\n"
    FileIODriver.save({"w": torch.arange(3)}, f"{root}/b/state.pt")
    assert torch.equal(FileIODriver.load(f"{root}/b/state.pt", mode="rb")["w"], torch.arange(3))
    FileIODriver.save_buffer(io.BytesIO(b"\x00\x01"), f"{root}/raw.bin")
    assert FileIODriver.load_buffer(f"{root}/raw.bin").read() == b"\x00\x01"
    assert FileIODriver.exists(f"{root}/raw.bin") and sorted(FileIODriver.list(root)) == ["a", "b", "raw.bin"]
    assert FileIODriver.walk(root, suffix=".pt") == [os.path.join(root, "b", "state.pt")]
    assert len(FileIODriver.walk(root)) == 3
    with pytest.raises(FileExistsError, match="already exists"):
        FileIODriver.makedirs(f"{root}/a")
    FileIODriver.makedirs(f"{root}/a", exist_ok=True)
    FileIODriver.delete(f"{root}/a")
    FileIODriver.delete(f"{root}/raw.bin")
    assert FileIODriver.list(root) == ["b"]
    with pytest.raises(FileNotFoundError, match="no such file"):
        FileIODriver.load(f"{root}/missing.txt", mode="r")
    assert IODriver.from_protocol("file") is FileIODriver and IODriver.from_protocol("petrel") is PetrelIODriver
    with pytest.raises(ValueError, match="protocol: 'hdfs' is not one of file, petrel"):
        IODriver.from_protocol("hdfs")


def test_petrel_io_driver_refuses_in_one_line():
    for call in (lambda: PetrelIODriver.load("s3://b/x", "r"), lambda: PetrelIODriver.save("x", "s3://b/x"),
                 lambda: PetrelIODriver.exists("s3://b/x")):
        with pytest.raises(NotImplementedError, match=r"^PetrelIODriver: Petrel \(Ceph\) is not supported; use s3:// "
                                                      "paths through fsspec"):
            call()
