"""CoLLiE's evaluators and metrics on collie: its import paths, its constructor options, a CoLLiE
user's `eval_fn` and result dicts, raw-tensor datasets, and generation on training records."""

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_llama_config
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU
from transformers import AutoTokenizer, GenerationConfig

import collie.evaluate as real
from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForTraining, ColliePadder
from collie.init_model import bundled_tokenizer_path
from collie.models.loss import GPTLMLoss

SEQUENCES = [[(7 * i + 3 * j) % 200 + 5 for j in range(4 + (5 * i) % 6)] for i in range(7)]


def _model(vocab_size: int = 256) -> LlamaForCausalLM:
    return LlamaForCausalLM.from_config(tiny_llama_config(vocab_size=vocab_size), seed=0, dtype=torch.float64).eval()


def _config(batch_size: int = 2) -> CollieConfig:
    return CollieConfig(model_config=tiny_llama_config(), eval_batch_size=batch_size)


def test_every_collie_name_imports_and_is_collies_own():
    from collie.controller.evaluator import (
        Evaluator,
        EvaluatorForClassfication,
        EvaluatorForClassification,
        EvaluatorForGeneration,
        EvaluatorForPerplexity,
    )
    from collie.metrics import AccuracyMetric, BaseMetric, BleuMetric, ClassifyFPreRecMetric, DecodeMetric, PPLMetric, RougeMetric
    from collie.metrics.accuracy import AccuracyMetric as accuracy
    from collie.metrics.base import BaseMetric as base
    from collie.metrics.bleu import BleuMetric as bleu
    from collie.metrics.classify_f1_pre_rec_metric import ClassifyFPreRecMetric as f1
    from collie.metrics.decode import DecodeMetric as decode
    from collie.metrics.ppl import PPLMetric as ppl
    from collie.metrics.rouge import RougeMetric as rouge

    assert EvaluatorForClassfication is EvaluatorForClassification is real.EvaluatorForClassification
    assert (Evaluator, EvaluatorForGeneration, EvaluatorForPerplexity) == (
        real.Evaluator, real.EvaluatorForGeneration, real.EvaluatorForPerplexity)
    for facade, submodule, own in [(AccuracyMetric, accuracy, real.AccuracyMetric), (BaseMetric, base, real.BaseMetric),
                                   (BleuMetric, bleu, real.BleuMetric), (ClassifyFPreRecMetric, f1,
                                                                         real.ClassifyFPreRecMetric),
                                   (DecodeMetric, decode, real.DecodeMetric), (PPLMetric, ppl, real.PPLMetric),
                                   (RougeMetric, rouge, real.RougeMetric)]:
        assert facade is submodule is own


def _raw_items(sequences, width=None, two_dims=False):
    """CoLLiE-style items of tensors; with `width`, left-padded with a mask of zeros."""
    items = []
    for seq in sequences:
        pad = (width or len(seq)) - len(seq)
        ids, mask = torch.tensor([0] * pad + seq), torch.tensor([0] * pad + [1] * len(seq))
        labels = torch.tensor([-100] * pad + seq)
        if two_dims:
            ids, mask, labels = ids[None], mask[None], labels[None]
        items.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return items


def test_raw_tensor_datasets_evaluate_to_the_perplexity_of_the_same_records():
    from collie.controller.evaluator import EvaluatorForPerplexity
    from collie.metrics import PPLMetric

    model = _model()

    def ppl(dataset, **kwargs):
        return EvaluatorForPerplexity(model=model, config=_config(), dataset=dataset, metrics={"ppl": PPLMetric()},
                                      **kwargs).evaluate()["ppl"]

    expected = ppl(CollieDatasetForTraining([{"tokens": seq} for seq in SEQUENCES]))
    assert ppl(_raw_items(SEQUENCES)) == pytest.approx(expected, rel=1e-12, abs=0)
    assert ppl(_raw_items(SEQUENCES, width=12, two_dims=True)) == pytest.approx(expected, rel=1e-12, abs=0)
    no_labels = [{k: v for k, v in item.items() if k != "labels"} for item in _raw_items(SEQUENCES)]
    assert ppl(no_labels) == pytest.approx(expected, rel=1e-12, abs=0)

    # The definition: exp(mean next-token NLL over every token of every sequence).
    with torch.no_grad():
        nll = [F.cross_entropy(model(torch.tensor([s])).logits[0, :-1], torch.tensor(s[1:]), reduction="sum")
               for s in SEQUENCES]
    assert expected == pytest.approx(math.exp(float(sum(nll)) / sum(len(s) - 1 for s in SEQUENCES)), rel=1e-12)

    # CoLLiE's loss_fn: each batch scored exp(mean loss), averaged over batches, as CoLLiE does.
    per_batch = ppl(_raw_items(SEQUENCES), loss_fn=GPTLMLoss())
    means = [math.exp(float(n) / (len(s) - 1)) for n, s in zip(nll, SEQUENCES)]
    assert per_batch != pytest.approx(expected, rel=1e-6)
    single = EvaluatorForPerplexity(model=model, config=_config(batch_size=1), dataset=_raw_items(SEQUENCES),
                                    metrics={"ppl": PPLMetric()}, loss_fn=GPTLMLoss()).eval()
    assert single == {"ppl#ppl": pytest.approx(sum(means) / len(means), rel=1e-12)}


def test_a_collie_eval_fn_and_its_dicts_feed_the_metrics():
    from collie.controller.evaluator import Evaluator
    from collie.metrics import AccuracyMetric, BaseMetric, ClassifyFPreRecMetric, DecodeMetric, PPLMetric

    model = _model()
    items = [{**item, "target": torch.tensor(i % 3)} for i, item in enumerate(_raw_items(SEQUENCES))]
    seen_batches = []

    def eval_fn(evaluator, batch):  # as a CoLLiE user writes it: tensors in, CoLLiE's keys out
        seen_batches.append(batch)
        logits = evaluator.model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last = batch["attention_mask"].sum(1) - 1  # right padding: each row's last real token
        scores = logits[torch.arange(len(last)), last, :3]
        return {"pred": scores, "target": torch.tensor(batch["target"]), "ppl": scores.exp().sum(-1)}

    class Counting(BaseMetric):  # a CoLLiE user's own metric
        def __init__(self):
            super().__init__(gather_result=True)
            self.count = 0

        def reset(self):
            self.count = 0

        def update(self, result):
            self.count += len(result["pred"])

        def get_metric(self):
            return {"count": self.count}

    class Silent(Counting):
        def get_metric(self):
            return None

    counting, monitor = Counting(), object()
    evaluator = Evaluator(model=model, config=_config(), dataset=items, eval_fn=eval_fn, monitors=[monitor],
                          metrics={"acc": AccuracyMetric(), "f1": ClassifyFPreRecMetric(f_type="macro"),
                                   "ppl": PPLMetric(), "count": counting, "silent": Silent()})
    results = evaluator.eval()
    assert counting.trainer is evaluator and evaluator.monitors == [monitor]
    assert torch.is_tensor(seen_batches[0]["input_ids"])
    assert len(seen_batches) == 4  # 7 items in batches of 2

    preds, scores_sum = [], []
    with torch.no_grad():
        for seq in SEQUENCES:
            scores = model(torch.tensor([seq])).logits[0, -1, :3]
            preds.append(int(scores.argmax()))
            scores_sum.append(float(scores.exp().sum()))
    targets = [i % 3 for i in range(len(SEQUENCES))]
    assert results["acc#acc"] == pytest.approx(sum(p == t for p, t in zip(preds, targets)) / len(targets))
    assert results["ppl#ppl"] == pytest.approx(sum(scores_sum) / len(scores_sum), rel=1e-12)
    assert results["count#count"] == len(SEQUENCES) and "silent" not in str(results)
    assert set(results) == {"acc#acc", "f1#f", "f1#pre", "f1#rec", "ppl#ppl", "count#count"}
    # evaluate() is the same run with collie's flat keys.
    assert evaluator.evaluate()["acc"] == results["acc#acc"]

    decode = DecodeMetric(verbose=False)
    decode.update({"pred": ["a", "b"]})  # CoLLiE's DecodeMetric input: predictions only
    decode.reduce(None)
    assert decode.get_metric() == {"samples": [{"prompt": None, "pred": "a", "target": None},
                                               {"prompt": None, "pred": "b", "target": None}]}


def test_a_callers_collate_fn_and_dataloader_are_used_as_given():
    from collie.controller.evaluator import EvaluatorForPerplexity
    from collie.metrics import PPLMetric

    model, received, padder = _model(), [], ColliePadder(pad_token_id=0)

    def collate_fn(items):
        received.extend(items)
        return padder([{"input_ids": item["input_ids"].tolist(), "labels": item["labels"].tolist()} for item in items])

    items = _raw_items(SEQUENCES)
    evaluator = EvaluatorForPerplexity(model=model, config=_config(), dataset=items, collate_fn=collate_fn,
                                       metrics={"ppl": PPLMetric()})
    through_collate = evaluator.evaluate()["ppl"]
    assert received == items  # the raw items, untouched
    loader = torch.utils.data.DataLoader(items, batch_size=3, collate_fn=collate_fn)
    assert evaluator.eval(dataloader=loader)["ppl#ppl"] == pytest.approx(through_collate, rel=1e-12)
    own = EvaluatorForPerplexity(model=model, config=_config(), dataset=items, metrics={"ppl": PPLMetric()})
    assert own.evaluate()["ppl"] == pytest.approx(through_collate, rel=1e-12)


QUICKSTART = [{"input": "Collie is a python package for ", "output": "finetuning large language models."},
              {"input": "The capital of France", "output": " is Paris."},
              {"input": "One two three", "output": " four five"}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bundled_tokenizer_path())


def _greedy(model, tokenizer, prompt: str, new_tokens: int) -> str:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=new_tokens, eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.parametrize("generation_config, batch_size, new_tokens", [
    (GenerationConfig(max_new_tokens=5), 2, lambda prompt_length: 5),
    ({"max_new_tokens": 3}, 2, lambda prompt_length: 3),
    (GenerationConfig(max_length=14), 1, lambda prompt_length: 14 - prompt_length)])
def test_generation_on_training_records_generates_from_their_prompts(tokenizer, generation_config, batch_size,
                                                                     new_tokens):
    from collie.controller.evaluator import EvaluatorForGeneration
    from collie.metrics import DecodeMetric

    model = _model(vocab_size=len(tokenizer))
    train_dataset = CollieDatasetForTraining(QUICKSTART, tokenizer)  # the seed quickstart's records
    evaluator = EvaluatorForGeneration(model=model, config=_config(batch_size), tokenizer=tokenizer,
                                       dataset=train_dataset[:3], metrics={"decode": DecodeMetric(verbose=False)},
                                       generation_config=generation_config)
    samples = evaluator.eval()["decode#samples"]
    assert len(samples) == len(QUICKSTART)
    for sample, record in zip(samples, QUICKSTART):
        count = new_tokens(len(tokenizer(record["input"])["input_ids"]))
        assert sample["pred"] == _greedy(model, tokenizer, record["input"], count)
        assert sample["prompt"].strip() == record["input"].strip()
        assert sample["target"] == record["output"]
    assert len({sample["pred"] for sample in samples}) > 1


def test_generation_takes_raw_token_ids_and_decodes_id_targets(tokenizer):
    from collie.controller.evaluator import EvaluatorForGeneration
    from collie.metrics import BleuMetric, DecodeMetric

    model = _model(vocab_size=len(tokenizer))
    items = [{"input_ids": torch.tensor(tokenizer(r["input"])["input_ids"]),
              "attention_mask": torch.ones(len(tokenizer(r["input"])["input_ids"]), dtype=torch.long),
              "target": torch.tensor(tokenizer(r["output"], add_special_tokens=False)["input_ids"])} for r in QUICKSTART]
    results = EvaluatorForGeneration(model=model, config=_config(), tokenizer=tokenizer, dataset=items,
                                     metrics={"decode": DecodeMetric(verbose=False), "bleu": BleuMetric()},
                                     max_new_tokens=4).evaluate()
    assert [s["pred"] for s in results["samples"]] == [_greedy(model, tokenizer, r["input"], 4) for r in QUICKSTART]
    assert [s["target"] for s in results["samples"]] == [r["output"] for r in QUICKSTART]
    assert "bleu" in results


def test_decode_metric_logs_and_appends_its_samples_to_a_file(tmp_path, caplog):
    from collie.metrics import DecodeMetric

    path = tmp_path / "decoded.jsonl"
    metric = DecodeMetric(verbose=True, save_to_file=True, save_path=str(path))
    for _ in range(2):  # two evaluations: the second appends
        metric.reset()
        with caplog.at_level(logging.INFO, logger="collie"):
            metric.update({"pred": ["first\nline", "second"], "target": ["first", None]})
            metric.reduce(None)
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert lines == 2 * [{"prompt": None, "pred": "first\nline", "target": "first"},
                         {"prompt": None, "pred": "second", "target": None}]
    assert caplog.text.count("decode: 'second'") == 2
    quiet = DecodeMetric(verbose=False)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="collie"):
        quiet.update({"pred": ["x"]})
        quiet.reduce(None)
    assert "decode:" not in caplog.text
    with pytest.raises(ValueError, match=r"^DecodeMetric: cannot write save_path .*missing.*: No such file"):
        DecodeMetric(save_to_file=True, save_path=str(tmp_path / "missing" / "out.jsonl"))
    with pytest.raises(ValueError, match=r"needs save_path"):
        DecodeMetric(save_to_file=True)


PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world again"]
TARGETS = ["the cat is on the mat", "the quick brown fox jumped", "hello there world"]


def _scored(metric, result):
    metric.update(result)
    metric.reduce(None)
    return metric.get_metric()


def test_text_metrics_take_collies_options():
    from collie.metrics import BleuMetric, RougeMetric

    characters = _scored(BleuMetric(split_fn=list, ngram=2, smooth="smooth1", average="macro"),
                         {"pred": PREDS, "target": [[t] for t in TARGETS]})["bleu"]
    bleu = BLEU(tokenize="none", max_ngram_order=2, smooth_method="floor", effective_order=True)
    expected = [bleu.sentence_score(" ".join(p), [" ".join(t)]).score for p, t in zip(PREDS, TARGETS)]
    assert characters == pytest.approx(sum(expected) / 3)
    references = [[t, t.upper()] for t in TARGETS]
    corpus = _scored(BleuMetric(smooth="smooth2"), {"pred": PREDS, "target": references})["bleu"]
    assert corpus == BLEU(smooth_method="add-k").corpus_score(PREDS, [TARGETS, [t.upper() for t in TARGETS]]).score

    rouge = _scored(RougeMetric(metrics=["rouge-1", "rouge-l"], stats=["p", "r"], split_fn=str.split),
                    {"pred": PREDS, "target": TARGETS})
    scorer = RougeScorer(["rouge1", "rougeL"])
    assert set(rouge) == {"rouge1-p", "rouge1-r", "rougeL-p", "rougeL-r"}
    expected = 100 * sum(scorer.score(t, p)["rougeL"].recall for p, t in zip(PREDS, TARGETS)) / 3
    assert rouge["rougeL-r"] == pytest.approx(expected)


def test_classification_metrics_read_collies_tensors():
    from collie.metrics import AccuracyMetric, ClassifyFPreRecMetric

    # [B, L, classes] scores with seq_len: the padded positions do not count.
    target = torch.tensor([[0, 1, 2], [2, 2, 0]])
    pred = F.one_hot(torch.tensor([[0, 1, 1], [2, 0, 0]]), 3).float()
    result = {"pred": pred, "target": target, "seq_len": torch.tensor([3, 1])}
    assert _scored(AccuracyMetric(gather_result=True), result)["acc"] == pytest.approx(3 / 4)
    f1 = _scored(ClassifyFPreRecMetric(tag_vocab={"neg": 0, "neu": 1, "pos": 2}, only_gross=False, f_type="macro",
                                       beta=2), {"pred": [torch.tensor(0), torch.tensor(2), torch.tensor(2)],
                                                 "target": torch.tensor([0, 1, 2])})
    # neg: P 1 R 1; neu: P 0 R 0; pos: P 1/2 R 1 -> F2 = 5 * 0.5 / (4 * 0.5 + 1)
    assert f1["f-neg"] == 1.0 and f1["f-neu"] == 0.0 and f1["f-pos"] == pytest.approx(2.5 / 3)
    assert f1["f"] == pytest.approx((1 + 2.5 / 3) / 3) and f1["pre-pos"] == 0.5
    with pytest.raises(ValueError, match="does not fit target"):
        _scored(AccuracyMetric(), {"pred": torch.zeros(2, 3), "target": torch.zeros(3)})


def test_what_collie_cannot_honour_is_refused_in_one_line(tokenizer):
    from collie.controller.evaluator import Evaluator, EvaluatorForClassfication, EvaluatorForGeneration
    from collie.metrics import BleuMetric, PPLMetric

    model, dataset = _model(vocab_size=len(tokenizer)), CollieDatasetForTraining(QUICKSTART, tokenizer)
    kwargs = dict(model=model, config=_config(), dataset=dataset, tokenizer=tokenizer)
    with pytest.raises(ValueError, match=r"^generation_config: collie's generate does not support num_beams, "
                                         r"repetition_penalty; it honours max_new_tokens"):
        EvaluatorForGeneration(generation_config=GenerationConfig(num_beams=2, repetition_penalty=1.2), **kwargs)
    with pytest.raises(ValueError, match="give generation_config or max_new_tokens, not both"):
        EvaluatorForGeneration(generation_config={"max_new_tokens": 2}, max_new_tokens=3, **kwargs)
    with pytest.raises(ValueError, match=r"leaves no room after a prompt"):
        EvaluatorForGeneration(generation_config=GenerationConfig(max_length=2), **kwargs).evaluate()
    with pytest.raises(ValueError, match=r"server=...\): collie serves during training from the Trainer"):
        Evaluator(server=object(), **kwargs)
    with pytest.raises(ValueError, match="by option likelihood only"):
        EvaluatorForClassfication(model, _config(), dataset, only_latin=False)
    with pytest.raises(ValueError, match="length_normalised=True scores them by mean loss"):
        EvaluatorForClassfication(model, _config(), dataset, loss_fn=GPTLMLoss())
    with pytest.raises(AttributeError, match="no DeepSpeed engine"):
        Evaluator(**kwargs).engine
    with pytest.raises(TypeError, match="eval_fn returned list; the metrics need a dict"):
        Evaluator(eval_fn=lambda evaluator, batch: [1], **kwargs).eval()
    with pytest.raises(ValueError, match="sacrebleu, which has no_smooth, smooth1, smooth2"):
        BleuMetric(smooth="nltk_smooth2")
    with pytest.raises(ValueError, match="corpus BLEU needs the same number of references"):
        _scored(BleuMetric(), {"pred": ["a", "b"], "target": [["a"], ["b", "c"]]})
    with pytest.raises(KeyError, match="expected 'nll_sum' and 'tokens', or 'ppl'"):
        PPLMetric().update({"loss": 1.0})
    mixed = PPLMetric()
    mixed.update({"nll_sum": 2.0, "tokens": 2})
    mixed.update({"ppl": torch.tensor([3.0])})
    with pytest.raises(ValueError, match="both token sums"):
        mixed.get_metric()
