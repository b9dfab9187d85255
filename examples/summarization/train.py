"""BillSum summarisation (CoLLiE's example) under tensor parallelism: ROUGE-1/2/L of greedy summaries.

    torchrun --nproc_per_node 2 examples/summarization/train.py              # FiscalNote/billsum
    python examples/summarization/train.py --dataset examples/summarization/fixture.jsonl tp_size=1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe import arguments, model_and_tokenizer, prompt_and_target, report, train_and_eval_rows  # noqa: E402

from collie.data import CollieDatasetForGeneration, CollieDatasetForTraining  # noqa: E402
from collie.evaluate import EvaluatorForGeneration, RougeMetric  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def as_record(row: dict) -> dict:
    return {"input": f"Bill:\n{row['text']}\n\nSummary:\n", "output": row["summary"]}


def main() -> None:
    args = arguments(__doc__, "FiscalNote/billsum", None, "train", "test")
    train_rows, eval_rows = train_and_eval_rows(args)
    config, model, tokenizer = model_and_tokenizer(os.path.join(HERE, "billsum.yaml"), args.overrides)
    length = config.data.max_length
    train = CollieDatasetForTraining([as_record(r) for r in train_rows], tokenizer, max_length=length)
    prompts = CollieDatasetForGeneration([prompt_and_target(as_record(r)) for r in eval_rows], tokenizer,
                                         max_length=length)
    evaluators = [EvaluatorForGeneration(model, config, prompts, {"rouge": RougeMetric(use_stemmer=True)},
                                         tokenizer=tokenizer, max_new_tokens=config.data.max_new_tokens)]
    report(Trainer(model, config, train_dataset=train, evaluators=evaluators, tokenizer=tokenizer))


if __name__ == "__main__":
    main()
