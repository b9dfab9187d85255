"""Preference pairs in trl's formats, tokenized as trl's `DPOTrainer` tokenizes them (trl 1.16.0,
`DPOTrainer._prepare_dataset`), and the collate that keeps a pair in one micro-batch.

Records: `{"prompt", "chosen", "rejected"}` as text, or conversational (`chosen`/`rejected` message
lists, `prompt` a message list), rendered with the tokenizer's chat template; without `prompt`,
the prompt is what `chosen` and `rejected` begin with (trl's `extract_prompt`). A conversational
record may carry trl's `tools` and `chat_template_kwargs`.

As trl does: the eos is appended to a text completion that does not end with it; the prompt and
prompt + completion are tokenized separately and the completion starts where the two token lists
diverge (a token that merges across the boundary belongs to the completion). Unlike trl, which
drops a record whose prompt fills `max_length` and trains on a pair whose completions are the
same, such records are errors naming them.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from collie.data.collate import ColliePadder
from collie.data.datasets import _RecordDataset
from collie.data.records import DataError
from collie.models.loss import IGNORE_INDEX

_KEYS = ("chosen", "rejected")


class CollieDatasetForPreference(_RecordDataset):
    """Items are `{"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"}`:
    prompt + completion, labels −100 on the prompt. `max_length` keeps the start of each sequence."""

    def _check(self, record: dict, origin: str) -> None:
        if any(key not in record for key in _KEYS):
            raise DataError(f"{origin}: record has keys {sorted(record)}; a preference record needs 'chosen' and "
                            "'rejected' (and optionally 'prompt'), as text or as message lists")
        if self.tokenizer is None:
            raise DataError(f"{origin}: a tokenizer is needed for preference records")
        conversational = isinstance(record["chosen"], list)
        if not conversational and not isinstance(record["chosen"], str):
            raise DataError(f"{origin}: 'chosen' must be text or a list of {{'role', 'content'}} messages, got "
                            f"{type(record['chosen']).__name__}")
        for key in ("prompt", *_KEYS):
            if key not in record:
                continue
            if conversational:
                _check_messages(record[key], origin, key)
            elif not isinstance(record[key], str):
                raise DataError(f"{origin}: {key!r} must be text like 'chosen', got {type(record[key]).__name__}")
        if record["chosen"] == record["rejected"]:
            raise DataError(f"{origin}: 'chosen' and 'rejected' are the same, so the pair prefers nothing")
        if conversational and not getattr(self.tokenizer, "chat_template", None):
            raise DataError(f"{origin}: conversational records need a tokenizer with a chat template, and this one "
                            "has none (set tokenizer.chat_template, or use text records)")

    def _item(self, record: dict, origin: str) -> dict:
        prompt, chosen, rejected = _split_prompt(record)
        if isinstance(chosen, list):
            render = _chat_renderer(self.tokenizer, record, origin)
            prompt_ids = render(prompt, True)
            with_chosen, with_rejected = render(prompt + chosen, False), render(prompt + rejected, False)
        else:
            eos = self.tokenizer.eos_token
            chosen, rejected = (text if eos is None or text.endswith(eos) else text + eos for text in (chosen, rejected))
            prompt_ids = self._encode(prompt, origin, "prompt", self.add_special_tokens)
            with_chosen = self._encode(prompt + chosen, origin, "chosen", self.add_special_tokens)
            with_rejected = self._encode(prompt + rejected, origin, "rejected", self.add_special_tokens)
        start = min(_common_prefix(prompt_ids, with_chosen), _common_prefix(prompt_ids, with_rejected))
        if self.max_length is not None and start >= self.max_length:
            raise DataError(f"{origin}: the prompt is {start} tokens but max_length is {self.max_length}, so no "
                            "completion token would be trained")
        item = {}
        for key, ids in (("chosen", with_chosen), ("rejected", with_rejected)):
            if len(ids) == start:
                raise DataError(f"{origin}: {key!r} adds no token to the prompt")
            ids = ids[:self.max_length] if self.max_length is not None else ids
            item[f"{key}_input_ids"] = list(ids)
            item[f"{key}_labels"] = [IGNORE_INDEX] * start + list(ids[start:])
        return item


class PreferenceCollator:
    """A batch of B pairs as 2·B rows, the B chosen sequences first, then their B rejected ones in
    the same order (row i and row B + i are one pair), padded by `padder` — so a pair is never
    split across micro-batches or ranks. Precomputed `ref_chosen_logps`/`ref_rejected_logps` of
    the items come along as one `reference_logps` tensor of the 2·B rows, in the same order."""

    def __init__(self, padder: ColliePadder) -> None:
        self.padder = padder

    def __call__(self, items: list[dict]) -> dict:
        rows = [{"input_ids": item[f"{key}_input_ids"], "labels": item[f"{key}_labels"]}
                for key in _KEYS for item in items]
        batch = self.padder(rows)
        if "ref_chosen_logps" in items[0]:
            batch["reference_logps"] = torch.tensor([float(item[f"ref_{key}_logps"]) for key in _KEYS for item in items],
                                                    dtype=torch.float64)
        return batch


def _split_prompt(record: dict) -> tuple[Any, Any, Any]:
    """(prompt, chosen, rejected); an implicit prompt is the longest start `chosen` and `rejected`
    share, a space before the point where they differ going to the completions (trl's `extract_prompt`,
    including its rule that a completion which is a prefix of the other leaves its last element)."""
    chosen, rejected = record["chosen"], record["rejected"]
    if "prompt" in record:
        return record["prompt"], chosen, rejected
    shared = min(len(chosen), len(rejected))
    index = max(shared - 1, 0)
    for i in range(shared):
        if chosen[i] != rejected[i]:
            index = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    return chosen[:index], chosen[index:], rejected[index:]


def _chat_renderer(tokenizer: Any, record: dict, origin: str):
    """Token ids of a message list with the tokenizer's chat template, the record's `tools` and
    `chat_template_kwargs` passed on as trl passes them."""
    tools = record.get("tools")
    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as e:
            raise DataError(f"{origin}: 'tools' is a string but not JSON ({e.msg})") from None
    extra = record.get("chat_template_kwargs", {})
    if not isinstance(extra, dict):
        raise DataError(f"{origin}: 'chat_template_kwargs' must be an object, got {type(extra).__name__}")

    def render(messages: list, generation_prompt: bool) -> list[int]:
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, tools=tools,
                                                     add_generation_prompt=generation_prompt, **extra)
        except Exception as e:  # a template's own error (jinja, raise_exception) names no record
            raise DataError(f"{origin}: the chat template cannot render this record ({type(e).__name__}: {e})"[:300]) \
                from None
        return list(rendered["input_ids"])

    return render


def _check_messages(messages: Any, origin: str, key: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: {key!r} must be a non-empty list of {{'role', 'content'}} like 'chosen'")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or \
                not isinstance(message.get("content"), str):
            raise DataError(f"{origin}: {key}[{k}] must be {{'role': str, 'content': str}}, got {message!r}"[:300])


def _common_prefix(ids: list[int], other: list[int]) -> int:
    length = 0
    for token, other_token in zip(ids, other):
        if token != other_token:
            break
        length += 1
    return length


class WithReference(torch.utils.data.Dataset):
    """A preference dataset whose items also carry the reference model's summed log-probabilities
    of their chosen and rejected sequences (`logps`: [pairs, 2]), which the collate passes on."""

    def __init__(self, dataset, logps: torch.Tensor) -> None:
        if len(logps) != len(dataset):
            raise ValueError(f"reference log-probabilities: {len(logps)} pairs for a dataset of {len(dataset)}")
        self.dataset, self.logps = dataset, logps
        self.tokenizer = getattr(dataset, "tokenizer", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        chosen, rejected = self.logps[index].tolist()
        return {**self.dataset[index], "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
