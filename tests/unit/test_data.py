import json

import pytest

from collie.data import (
    CollieDatasetForGeneration,
    CollieDatasetForTraining,
    ColliePadder,
    DataError,
    GlobalBatchSampler,
)


def test_formats_and_label_masking(bundled_tokenizer):
    tok = bundled_tokenizer
    ds = CollieDatasetForTraining([
        {"input": "Question: hi\nAnswer: ", "output": "hello"},
        {"text": "plain text"},
        {"tokens": [5, 6, 7], "labels": [-100, 6, 7]},
        {"instruction": "Say hi", "input": "", "output": "hi"},
    ], tok)
    prompt = tok("Question: hi\nAnswer: ")["input_ids"]
    item = ds[0]
    assert item["input_ids"][:len(prompt)] == prompt
    assert item["labels"][:len(prompt)] == [-100] * len(prompt)
    assert item["labels"][len(prompt):] == item["input_ids"][len(prompt):]
    assert item["input_ids"][-1] == tok.eos_token_id
    assert ds[1]["labels"] == ds[1]["input_ids"]
    assert ds[2] == {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}
    assert "### Instruction:\nSay hi" in tok.decode(ds[3]["input_ids"])
    assert len(ds[:2]) == 2 and ds[:2][1] == ds[1]


def test_truncation(bundled_tokenizer):
    ds = CollieDatasetForTraining([{"text": "word " * 50}], bundled_tokenizer, max_length=8)
    assert len(ds[0]["input_ids"]) == 8 and len(ds[0]["labels"]) == 8


def test_bad_records_name_file_and_line(tmp_path, bundled_tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: record has keys \['prompt'\]"):
        CollieDatasetForTraining(str(path), bundled_tokenizer)
    path.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: malformed JSON"):
        CollieDatasetForTraining(str(path), bundled_tokenizer)
    path.write_text("")
    with pytest.raises(DataError, match="the dataset is empty"):
        CollieDatasetForTraining(str(path), bundled_tokenizer)
    with pytest.raises(DataError, match="data file not found"):
        CollieDatasetForTraining(str(tmp_path / "none.json"), bundled_tokenizer)
    with pytest.raises(DataError, match="record 1: 'output' must be a string"):
        CollieDatasetForTraining([{"text": "a"}, {"input": "a", "output": 3}], bundled_tokenizer)
    with pytest.raises(DataError, match="record 0: the prompt is .* tokens but max_length is 4"):
        CollieDatasetForTraining([{"input": "a long prompt of words", "output": "x"}], bundled_tokenizer,
                                 max_length=4)
    with pytest.raises(DataError, match="'labels' has 2 entries, 'tokens' has 3"):
        CollieDatasetForTraining([{"tokens": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(DataError, match=r"record 0: record has keys \['target'\]; expected 'text'"):
        CollieDatasetForGeneration([{"target": "x"}], bundled_tokenizer)


def test_padder_sides():
    items = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    right = ColliePadder(0)(items)
    assert right["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    # A sequence's first label has nothing before it to predict it from: never a target.
    assert right["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = ColliePadder(9, padding_side="left")(items)
    assert left["input_ids"].tolist() == [[1, 2, 3], [9, 9, 4]]
    assert left["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ColliePadder(0, max_length=2)(items)["input_ids"].tolist() == [[1, 2], [4, 0]]


def test_global_batches_do_not_depend_on_layout():
    def global_batches(mbs, ga, dp):
        per_rank = [list(GlobalBatchSampler(40, mbs, ga, dp, r, seed=3).epoch(1)) for r in range(dp)]
        return [sorted(i for rank in per_rank for mb in rank[b] for i in mb) for b in range(len(per_rank[0]))]

    reference = global_batches(8, 1, 1)
    assert len(reference) == 5
    assert global_batches(4, 2, 1) == reference == global_batches(2, 2, 2) == global_batches(1, 4, 2)
    # Resume skips whole batches: the rest of the epoch is unchanged.
    sampler = GlobalBatchSampler(40, 4, 2, 1, 0, seed=3)
    assert list(sampler.epoch(1, start_batch=2)) == list(sampler.epoch(1))[2:]
    assert list(sampler.epoch(0)) != list(sampler.epoch(1))
    with pytest.raises(ValueError, match="global batch .* is larger than the dataset"):
        GlobalBatchSampler(3, 4, 1, 1, 0, seed=0)
