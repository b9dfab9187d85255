"""The dataset items evaluators accept, made into the token lists collie's padder reads.

CoLLiE lets a dataset hold raw tensors (`{"input_ids", "attention_mask", "labels"}`, each [L]
or [1, L]); a generation evaluation may run on training records (`{"input_ids", "labels"}`,
the prompt's labels −100), whose prompt is generated from and whose answer is the target.
"""

from __future__ import annotations

import torch

from collie.data.datasets import tokenized_record
from collie.models.loss import IGNORE_INDEX


def token_lists(item: dict) -> dict:
    """`item` with its ids and labels as lists (labels default to the ids) and the positions its
    `attention_mask` marks as padding left out, as a tokenized training record is read; its other
    keys are kept. An item of plain lists without a mask is returned as it is."""
    if "attention_mask" not in item and not any(torch.is_tensor(value) for value in item.values()):
        return item
    input_ids, labels = tokenized_record(item, "an evaluation item")
    rest = {key: value.tolist() if torch.is_tensor(value) else value for key, value in item.items()
            if key not in ("input_ids", "labels", "attention_mask")}
    return {**rest, "input_ids": input_ids, "labels": labels}


def generation_item(item: dict, tokenizer, skip_special_tokens: bool = True) -> dict:
    """`{"input_ids", "text", "target"}` to generate from. A generation record passes through; a
    training record's prompt is the tokens before its first trained label and its target the
    first trained span, decoded; anything else is all prompt, its `target` (text or ids) kept."""
    if "text" in item:
        return item
    ids, labels = item["input_ids"], item.get("labels")
    prompt_length = 0
    if labels is not None:
        while prompt_length < len(labels) and labels[prompt_length] == IGNORE_INDEX:
            prompt_length += 1
    if 0 < prompt_length < len(ids):
        answer = []
        for token, label in zip(ids[prompt_length:], labels[prompt_length:]):
            if label == IGNORE_INDEX:
                break
            answer.append(token)
        target = tokenizer.decode(answer, skip_special_tokens=skip_special_tokens)
        ids = ids[:prompt_length]
    else:
        target = item.get("target")
        if isinstance(target, list) and target and all(isinstance(token, int) for token in target):
            target = tokenizer.decode(target, skip_special_tokens=skip_special_tokens)  # token ids
    return {"input_ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=skip_special_tokens),
            "target": target}
