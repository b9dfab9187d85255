"""German → English translation (CoLLiE's IWSLT2017 example) under pipeline parallelism: corpus
BLEU (sacrebleu) of greedy translations.

    torchrun --nproc_per_node 2 examples/translation/train.py                   # wmt/wmt16 de-en
    torchrun --nproc_per_node 2 examples/translation/train.py --dataset IWSLT/iwslt2017 --subset iwslt2017-de-en
    python examples/translation/train.py --dataset examples/translation/fixture.jsonl pp_size=1

IWSLT2017 on the hub is a loading script, which recent `datasets` no longer runs; WMT16 de-en has
the same row format ({"translation": {"de", "en"}}) as parquet and is the default.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe import arguments, model_and_tokenizer, prompt_and_target, report, train_and_eval_rows  # noqa: E402

from collie.data import CollieDatasetForGeneration, CollieDatasetForTraining  # noqa: E402
from collie.evaluate import BleuMetric, EvaluatorForGeneration  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def as_record(row: dict) -> dict:
    pair = row["translation"]
    return {"input": f"German: {pair['de']}\nEnglish: ", "output": pair["en"]}


def main() -> None:
    args = arguments(__doc__, "wmt/wmt16", "de-en", "train[:200000]", "validation")
    train_rows, eval_rows = train_and_eval_rows(args)
    config, model, tokenizer = model_and_tokenizer(os.path.join(HERE, "iwslt2017.yaml"), args.overrides)
    length = config.data.max_length
    train = CollieDatasetForTraining([as_record(r) for r in train_rows], tokenizer, max_length=length)
    prompts = CollieDatasetForGeneration([prompt_and_target(as_record(r)) for r in eval_rows], tokenizer,
                                         max_length=length)
    evaluators = [EvaluatorForGeneration(model, config, prompts, {"bleu": BleuMetric()}, tokenizer=tokenizer,
                                         max_new_tokens=config.data.max_new_tokens)]
    report(Trainer(model, config, train_dataset=train, evaluators=evaluators, tokenizer=tokenizer))


if __name__ == "__main__":
    main()
