"""Further pre-training with an expanded vocabulary (CoLLiE's example): add Chinese tokens to the
tokenizer, grow the embedding and head (new rows start at the mean of the old ones), then train
on Chinese text under tensor parallelism; perplexity on held-out text.

    torchrun --nproc_per_node 2 examples/further_pretraining/train.py       # wikimedia/wikipedia zh
    python examples/further_pretraining/train.py --dataset examples/further_pretraining/fixture.jsonl tp_size=1

The expanded model is written to OUTPUT_DIR/expanded (an HF directory with its tokenizer);
`collie expand-vocab MODEL OUT --tokens-file new_tokens.txt` does the same step on its own.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recipe import arguments, model_and_tokenizer, report, train_and_eval_rows  # noqa: E402

from collie.data import CollieDatasetForTraining  # noqa: E402
from collie.evaluate import EvaluatorForPerplexity, PPLMetric  # noqa: E402
from collie.trainer import Trainer  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def expand(output_dir: str, tokens_file: str):
    def prepare(model_dir: str) -> str:
        from collie.models.base import CollieModel, load_tokenizer
        from collie.models.vocabulary import expand_vocabulary

        out = os.path.join(output_dir, "expanded")
        if not os.path.isfile(os.path.join(out, "config.json")):
            model, tokenizer = CollieModel.from_pretrained(model_dir), load_tokenizer(model_dir)
            with open(tokens_file, encoding="utf-8") as f:
                tokens = [line.strip() for line in f if line.strip()]
            before = len(tokenizer)
            expand_vocabulary(model, tokenizer, tokens)
            model.save_pretrained(out, tokenizer=tokenizer)
            print(f"vocabulary {before} → {len(tokenizer)}; expanded model in {out}", flush=True)
        return out

    return prepare


def main() -> None:
    args = arguments(__doc__, "wikimedia/wikipedia", "20231101.zh", "train[:20000]", "train[20000:20200]")
    train_rows, eval_rows = train_and_eval_rows(args)
    output_dir = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("output_dir=")),
                      "runs/further_pretraining")
    config, model, tokenizer = model_and_tokenizer(os.path.join(HERE, "pretrain.yaml"), args.overrides,
                                                   prepare=expand(output_dir, os.path.join(HERE, "new_tokens.txt")))
    length = config.data.max_length
    train = CollieDatasetForTraining([{"text": r["text"]} for r in train_rows], tokenizer, max_length=length)
    held_out = CollieDatasetForTraining([{"text": r["text"]} for r in eval_rows], tokenizer, max_length=length)
    evaluators = [EvaluatorForPerplexity(model, config, held_out, {"ppl": PPLMetric()})]
    report(Trainer(model, config, train_dataset=train, evaluators=evaluators, tokenizer=tokenizer))


if __name__ == "__main__":
    main()
