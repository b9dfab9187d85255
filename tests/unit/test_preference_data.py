"""Preference records tokenized as trl's DPOTrainer tokenizes them, the pair collate, and bad
records named by file and line."""

import importlib.util
import json
import os
import re
from types import SimpleNamespace

import pytest
import torch
from conftest import SHARED
from datasets import Dataset
from transformers import AutoTokenizer

from collie.data.collate import ColliePadder
from collie.data.preference import CollieDatasetForPreference, PreferenceCollator
from collie.data.records import DataError
from collie.init_model import bundled_tokenizer_path

# trl (a dev dependency) is imported inside the tests that compare with it: it takes seconds to import.
needs_trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed")
GPT2 = os.path.join(SHARED, "gpt2-tokenizer")
# A template whose generation prompt ("<|assistant|>\n") the full conversation renders differently
# ("<|assistant|>" + content): the completion must start where the two token lists diverge.
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{% if m['role'] != 'assistant' %}\n{% endif %}"
            "{{ m['content'] }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")

TEXT = [
    {"prompt": "Question: what is 2+2?\nAnswer:", "chosen": " 4", "rejected": " five"},
    {"prompt": "Hello wor", "chosen": "ld", "rejected": "m"},  # tokens merge across the prompt's end
    {"prompt": "Say hi", "chosen": " hi there</s><|endoftext|>", "rejected": " no"},  # already ends with an eos
]
IMPLICIT_TEXT = [{"chosen": "The sky is blue.", "rejected": "The sky is green."},
                 {"chosen": "Yes, of course", "rejected": "Yes, of course not"}]
CHAT = [
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
     "chosen": [{"role": "assistant", "content": "4"}], "rejected": [{"role": "assistant", "content": "five"}]},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
]
IMPLICIT_CHAT = [{"chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
                  "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}]}]


def tokenizer(name: str, template: bool = False):
    path = bundled_tokenizer_path() if name == "bundled" else GPT2
    if not os.path.isdir(path):
        pytest.skip(f"{path} is not here")
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TEMPLATE if template else None
    return tok


def trl_items(records: list, tok, tmp_path) -> list[dict]:
    """trl's own preprocessing (`DPOTrainer._prepare_dataset`: prompt extraction, eos, tokenization),
    which reads nothing of the trainer but its tokenizer."""
    from trl import DPOConfig, DPOTrainer  # see needs_trl

    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, disable_tqdm=True)
    prepared = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list(records), tok, args,
                                           "train")
    return [{f"{key}_input_ids": row["prompt_ids"] + row[f"{key}_ids"],
             f"{key}_labels": [-100] * len(row["prompt_ids"]) + row[f"{key}_ids"]}
            for row in prepared for key in ("chosen", "rejected")]


def ours(records: list, tok) -> list[dict]:
    return [{key: value for key, value in item.items() if key.startswith(side)}
            for item in CollieDatasetForPreference(records, tok) for side in ("chosen", "rejected")]


@needs_trl
@pytest.mark.parametrize("name", ["bundled", "gpt2"])
@pytest.mark.parametrize("records", [TEXT, IMPLICIT_TEXT], ids=["text", "implicit-prompt"])
def test_text_records_tokenize_as_trl(name, records, tmp_path):
    tok = tokenizer(name)
    assert ours(records, tok) == trl_items(records, tok, tmp_path)


@needs_trl
@pytest.mark.parametrize("records", [CHAT, IMPLICIT_CHAT], ids=["chat", "implicit-prompt"])
def test_conversational_records_tokenize_as_trl(records, tmp_path):
    tok = tokenizer("bundled", template=True)
    assert ours(records, tok) == trl_items(records, tok, tmp_path)


def test_labels_mask_the_prompt_and_the_completion_starts_where_the_token_lists_diverge():
    tok = tokenizer("bundled")
    item = CollieDatasetForPreference([TEXT[0]], tok)[0]
    prompt = tok(TEXT[0]["prompt"])["input_ids"]
    for side in ("chosen", "rejected"):
        ids, labels = item[f"{side}_input_ids"], item[f"{side}_labels"]
        assert ids == tok(TEXT[0]["prompt"] + TEXT[0][side] + tok.eos_token)["input_ids"]
        assert ids[:len(prompt)] == prompt and labels == [-100] * len(prompt) + ids[len(prompt):]
    chat = CollieDatasetForPreference(CHAT, tokenizer("bundled", template=True))[0]
    generation = tokenizer("bundled", template=True).apply_chat_template(CHAT[0]["prompt"], add_generation_prompt=True,
                                                                          tokenize=True, return_dict=False)
    start = chat["chosen_labels"].count(-100)
    assert 0 < start < len(generation)  # "<|assistant|>\n" and "<|assistant|>4" part ways inside the prompt
    assert chat["chosen_input_ids"][:start] == generation[:start]


def test_a_token_merging_across_the_prompt_end_belongs_to_the_completion():
    tok = tokenizer("gpt2")  # "Hello wor" is [Hello, wor], "Hello world" is [Hello, world]
    item = CollieDatasetForPreference([TEXT[1]], tok)[0]
    assert item["chosen_input_ids"] == tok("Hello world<|endoftext|>")["input_ids"]
    assert item["chosen_labels"] == [-100] + item["chosen_input_ids"][1:]


def test_max_length_keeps_the_start():
    tok = tokenizer("bundled")
    record = {"prompt": "Say", "chosen": " one two three four five six seven", "rejected": " no"}
    full = CollieDatasetForPreference([record], tok)[0]
    item = CollieDatasetForPreference([record], tok, max_length=6)[0]
    assert item["chosen_input_ids"] == full["chosen_input_ids"][:6]
    assert item["chosen_labels"] == full["chosen_labels"][:6]
    assert item["rejected_input_ids"] == full["rejected_input_ids"][:6]


def test_pair_collate_puts_chosen_rows_first_and_keeps_reference_logps():
    tok = tokenizer("bundled")
    items = list(CollieDatasetForPreference(TEXT, tok))
    for k, item in enumerate(items):
        item.update(ref_chosen_logps=-1.0 - k, ref_rejected_logps=-10.0 - k)
    batch = PreferenceCollator(ColliePadder(tok.pad_token_id, multiple_of=8))(items)
    assert batch["input_ids"].shape[0] == 6 and batch["input_ids"].shape[1] % 8 == 0
    rows = [(item[f"{side}_input_ids"], item[f"{side}_labels"]) for side in ("chosen", "rejected") for item in items]
    for row, (ids, labels) in enumerate(rows):
        n = len(ids)
        assert batch["input_ids"][row, :n].tolist() == ids
        assert batch["labels"][row, :n].tolist() == [-100] + labels[1:]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert set(batch["labels"][row, n:].tolist()) <= {-100}
    assert batch["reference_logps"].tolist() == [-1.0, -2.0, -3.0, -10.0, -11.0, -12.0]
    assert batch["reference_logps"].dtype == torch.float64
    plain = list(CollieDatasetForPreference(TEXT, tok))
    assert "reference_logps" not in PreferenceCollator(ColliePadder(tok.pad_token_id))(plain)


BAD = [
    ({"prompt": "p", "chosen": "a"}, "needs 'chosen' and 'rejected'"),
    ({"prompt": "p", "chosen": "a", "rejected": 3}, "'rejected' must be text like 'chosen'"),
    ({"prompt": "p", "chosen": {"text": "a"}, "rejected": "b"}, "'chosen' must be text or a list of"),
    ({"prompt": ["p"], "chosen": "a", "rejected": "b"}, "'prompt' must be text like 'chosen'"),
    ({"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant",
                                                                                      "content": "b"}]},
     "'prompt' must be a non-empty list"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant"}]},
     r"rejected\[0\] must be \{'role': str, 'content': str\}"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "'chosen' and 'rejected' are the same"),
    ({"prompt": "Say a few words", "chosen": " a", "rejected": " b"}, "max_length is 3, so no completion token"),
]


@pytest.mark.parametrize("record, message", BAD)
def test_bad_record_names_file_and_line(tmp_path, record, message):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "p", "chosen": " a", "rejected": " b"})
    path.write_text(f"{good}\n\n{json.dumps(record)}\n")
    with pytest.raises(DataError) as error:
        CollieDatasetForPreference(str(path), tokenizer("bundled"), max_length=3 if "max_length" in message else None)
    text = str(error.value)
    assert text.startswith(f"{path}:3: ") and "\n" not in text
    assert re.search(message, text), text


def test_conversational_records_need_a_chat_template(tmp_path):
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(CHAT))
    with pytest.raises(DataError, match=rf"^{path} record 0: conversational records need a tokenizer with a chat "):
        CollieDatasetForPreference(str(path), tokenizer("bundled"))
    with pytest.raises(DataError, match="^record 0: a tokenizer is needed"):
        CollieDatasetForPreference(TEXT, None)
