"""Evaluation beyond perplexity: classification by option likelihood, accuracy and F1, and BLEU /
ROUGE equal to calling sacrebleu and rouge-score directly."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_llama_config
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from collie import CollieConfig, LlamaForCausalLM
from collie.data import CollieDatasetForClassification, DataError
from collie.evaluate import AccuracyMetric, BleuMetric, ClassifyFPreRecMetric, EvaluatorForClassification, RougeMetric
from collie.evaluate.text_metrics import CharacterTokenizer

PREDS = ["the cat sat on the mat", "a quick brown fox jumps", "hello world again", "running runners ran"]
TARGETS = ["the cat is on the mat", "the quick brown fox jumped", "hello there world", "runners were running"]


def _scored(metric, preds, targets):
    metric.update({"pred": preds, "target": targets})
    metric.reduce(None)
    return metric.get_metric()


def test_bleu_equals_sacrebleu():
    assert _scored(BleuMetric(), PREDS, TARGETS)["bleu"] == BLEU().corpus_score(PREDS, [TARGETS]).score
    zh_preds, zh_targets = ["我们今天去公园散步", "模型训练得很好"], ["我们今天去公园玩", "模型训练得非常好"]
    expected = BLEU(tokenize="zh").corpus_score(zh_preds, [zh_targets]).score
    assert _scored(BleuMetric(tokenize="zh"), zh_preds, zh_targets)["bleu"] == expected > 0


def test_rouge_equals_rouge_score():
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    got = _scored(RougeMetric(use_stemmer=True), PREDS, TARGETS)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = 100 * sum(scorer.score(t, p)[name].fmeasure for p, t in zip(PREDS, TARGETS)) / len(PREDS)
        assert got[name] == pytest.approx(expected, abs=1e-12)
    # rouge-score's own tokenizer drops Chinese entirely; characters make it count.
    chinese = _scored(RougeMetric(tokenizer=CharacterTokenizer()), ["我们今天去公园"], ["我们明天去公园"])
    assert chinese["rouge1"] == pytest.approx(100 * 6 / 7)


def test_accuracy_and_f1_micro_macro_with_report():
    preds, targets = [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0]
    assert _scored(AccuracyMetric(), preds, targets)["acc"] == pytest.approx(4 / 6)
    micro = _scored(ClassifyFPreRecMetric(), preds, targets)
    assert micro["f"] == pytest.approx(4 / 6) and micro["pre"] == pytest.approx(4 / 6)
    macro = _scored(ClassifyFPreRecMetric(average="macro", report=True, labels=["neg", "neu", "pos"]), preds,
                    targets)
    # neg: P 1/2 R 1/2; neu: P 1 R 1/2; pos: P 2/3 R 1
    f = [0.5, 2 * 0.5 / 1.5, 2 * (2 / 3) / (5 / 3)]
    assert macro["pre-neu"] == 1.0 and macro["rec-pos"] == 1.0 and macro["f-neg"] == pytest.approx(0.5)
    assert macro["f"] == pytest.approx(sum(f) / 3) and macro["pre"] == pytest.approx((0.5 + 1 + 2 / 3) / 3)


class _Tokenizer:
    """Characters as token ids (enough to test the plumbing without a vocabulary file)."""

    eos_token_id = pad_token_id = 0

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1 + ord(c) % 250 for c in text]}


RECORDS = [{"input": "review: great film ", "output": "positive"}, {"input": "review: dull ", "output": "negative"},
           {"input": "is it good? ", "options": ["yes", "no", "maybe"], "target": 2}]


@pytest.mark.parametrize("normalised", [False, True])
def test_classification_picks_the_most_likely_option(normalised):
    torch.manual_seed(0)
    config = CollieConfig(model_config=tiny_llama_config(), eval_batch_size=2)
    model = LlamaForCausalLM.from_config(config).eval()
    dataset = CollieDatasetForClassification(RECORDS, _Tokenizer(), options=["negative", "positive"])
    got = []

    class Predictions(AccuracyMetric):
        def update(self, result):
            got.extend(result["pred"])
            super().update(result)

    result = EvaluatorForClassification(model, config, dataset, {"acc": Predictions()},
                                        length_normalised=normalised).evaluate()
    expected = []
    with torch.no_grad():
        for item in dataset:  # one option at a time, no padding: the definition
            scores = []
            for option in item["options"]:
                ids = torch.tensor([item["input_ids"] + option])
                logp = F.log_softmax(model(ids).logits[0, :-1].double(), -1)
                picked = [logp[len(item["input_ids"]) - 1 + k, t] for k, t in enumerate(option)]
                scores.append(sum(picked) / (len(option) if normalised else 1))
            expected.append(max(range(len(scores)), key=lambda j: scores[j]))
    assert got == expected
    assert result["acc"] == pytest.approx(sum(e == item["target"] for e, item in zip(expected, dataset)) / 3)
    assert not math.isnan(result["acc"])


def test_classification_records_fail_naming_the_record():
    with pytest.raises(DataError, match=r"record 1: 'output' 'meh' is not one of the options"):
        CollieDatasetForClassification([{"input": "a", "output": "yes"}, {"input": "b", "output": "meh"}],
                                       _Tokenizer(), options=["yes", "no"])
    with pytest.raises(DataError, match="'target' must be the index of the right option"):
        CollieDatasetForClassification([{"input": "a", "options": ["x", "y"], "target": 5}], _Tokenizer())


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_chat_records_take_the_loss_on_assistant_turns_only():
    from transformers import AutoTokenizer

    from collie.data import CollieDatasetForTraining
    from collie.init_model import bundled_tokenizer_path

    tokenizer = AutoTokenizer.from_pretrained(bundled_tokenizer_path())
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Collie."}]
    tokenizer.chat_template = None  # the bundled tokenizer has one (the quickstart's format)
    with pytest.raises(DataError, match="record 0: 'messages' records need a tokenizer with a chat template"):
        CollieDatasetForTraining([{"messages": messages}], tokenizer)
    tokenizer.chat_template = CHATML
    item = CollieDatasetForTraining([{"messages": messages}], tokenizer)[0]
    assert item["input_ids"] == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    trained = [t for t, label in zip(item["input_ids"], item["labels"]) if label != -100]
    assert [label for label in item["labels"] if label != -100] == trained
    # Exactly the two assistant answers, each with the template's end of turn.
    assert tokenizer.decode(trained) == "Hello!<|im_end|>\nCollie.<|im_end|>\n"
    with pytest.raises(DataError, match="has no assistant turn"):
        CollieDatasetForTraining([{"messages": messages[:2]}], tokenizer)
    with pytest.raises(DataError, match=r"messages\[1\] must be \{'role': str, 'content': str\}"):
        CollieDatasetForTraining([{"messages": [messages[0], {"role": "user"}]}], tokenizer)
