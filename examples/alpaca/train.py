"""Alpaca instruction tuning (CoLLiE's alpaca example) under 3D parallelism: perplexity on held-out
instructions and ROUGE-L of greedy answers.

    torchrun --nproc_per_node 8 examples/alpaca/train.py              # tatsu-lab/alpaca
    python examples/alpaca/train.py --dataset examples/alpaca/fixture.json tp_size=1 pp_size=1
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe import arguments, model_and_tokenizer, prompt_and_target, report, train_and_eval_rows  # noqa: E402

from collie.data import CollieDatasetForGeneration, CollieDatasetForTraining  # noqa: E402
from collie.evaluate import EvaluatorForGeneration, EvaluatorForPerplexity, PPLMetric, RougeMetric  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPT = ("Below is an instruction that describes a task{context}. Write a response that appropriately completes "
          "the request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n")


def as_record(row: dict) -> dict:
    context = ", paired with an input that provides further context" if row.get("input") else ""
    given = f"### Input:\n{row['input']}\n\n" if row.get("input") else ""
    return {"input": PROMPT.format(context=context, instruction=row["instruction"], input=given),
            "output": row["output"]}


def main() -> None:
    # tatsu-lab/alpaca has one split: the last rows are held out for evaluation.
    args = arguments(__doc__, "tatsu-lab/alpaca", None, "train[:-200]", "train[-200:]")
    train_rows, eval_rows = train_and_eval_rows(args)
    config, model, tokenizer = model_and_tokenizer(os.path.join(HERE, "alpaca.yaml"), args.overrides)
    length = config.data.max_length
    train = CollieDatasetForTraining([as_record(r) for r in train_rows], tokenizer, max_length=length)
    held_out = [as_record(r) for r in eval_rows]
    evaluators = [
        EvaluatorForPerplexity(model, config, CollieDatasetForTraining(held_out, tokenizer, max_length=length),
                               {"ppl": PPLMetric()}),
        EvaluatorForGeneration(model, config, CollieDatasetForGeneration(
                                   [prompt_and_target(r) for r in held_out], tokenizer, max_length=length),
                               {"rouge": RougeMetric(rouge_types=("rougeL",))}, tokenizer=tokenizer,
                               max_new_tokens=config.data.max_new_tokens),
    ]
    report(Trainer(model, config, train_dataset=train, evaluators=evaluators, tokenizer=tokenizer))


if __name__ == "__main__":
    main()
