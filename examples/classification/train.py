"""IMDB sentiment classification (CoLLiE's example) under ZeRO-3: trained as a completion
("Sentiment: positive"), evaluated by which label the model finds more likely.

    torchrun --nproc_per_node 8 examples/classification/train.py              # stanfordnlp/imdb
    python examples/classification/train.py --dataset examples/classification/fixture.jsonl zero_stage=0
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe import arguments, model_and_tokenizer, report, train_and_eval_rows  # noqa: E402

from collie.data import CollieDatasetForClassification, CollieDatasetForTraining  # noqa: E402
from collie.evaluate import AccuracyMetric, ClassifyFPreRecMetric, EvaluatorForClassification  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LABELS = [" negative", " positive"]  # IMDB: label 0 is negative, 1 positive


def prompt(row: dict) -> str:
    return f"Review: {row['text']}\nSentiment:"


def main() -> None:
    args = arguments(__doc__, "stanfordnlp/imdb", None, "train", "test")
    train_rows, eval_rows = train_and_eval_rows(args)
    config, model, tokenizer = model_and_tokenizer(os.path.join(HERE, "imdb.yaml"), args.overrides)
    length = config.data.max_length
    train = CollieDatasetForTraining([{"input": prompt(r), "output": LABELS[r["label"]]} for r in train_rows],
                                     tokenizer, max_length=length)
    scored = CollieDatasetForClassification([{"input": prompt(r), "options": LABELS, "target": r["label"]}
                                             for r in eval_rows], tokenizer, max_length=length)
    metrics = {"accuracy": AccuracyMetric(), "f1": ClassifyFPreRecMetric(average="macro")}
    evaluators = [EvaluatorForClassification(model, config, scored, metrics)]
    report(Trainer(model, config, train_dataset=train, evaluators=evaluators, tokenizer=tokenizer))


if __name__ == "__main__":
    main()
