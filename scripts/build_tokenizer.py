"""Rebuild collie/assets/tokenizer: a small byte-level BPE that needs no download.

Trained on Python's own documentation (pydoc_data, shipped with CPython) plus the
quickstart data, so `collie init-model` and the quickstart work offline. Deterministic:
running it again gives the same files.

    python scripts/build_tokenizer.py
"""

import json
import os
import pydoc_data.topics as topics

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "collie", "assets", "tokenizer")
VOCAB = 4096
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]
# The chat template (`/v1/chat/completions`, chat records): the quickstart's own format, so a model
# tuned on its input/output records answers a chat in the words it learned —
#   <s>{system}\nQuestion: {user}\nAnswer: {assistant}</s>\nQuestion: {user}\nAnswer: <generation>
CHAT_TEMPLATE = ("{{ bos_token }}{% for message in messages %}"
                 "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\\n' }}"
                 "{% elif message['role'] == 'assistant' %}{{ 'Answer: ' + message['content'] + eos_token + '\\n' }}"
                 "{% else %}{{ message['content'] + '\\n' }}{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}{{ 'Answer: ' }}{% endif %}")


def corpus():
    yield from topics.topics.values()
    with open(os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            yield record["input"] + record["output"]


def main() -> None:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    # LLaMA convention: a BOS token starts every encoded text.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(OUT)
    print(f"wrote {OUT} ({len(fast)} tokens)")


if __name__ == "__main__":
    main()
