"""Chat records (`{"messages": [{"role", "content"}, ...]}`) rendered with the tokenizer's own
chat template; the loss is taken on the assistant turns only (their content and the template's
end-of-turn tokens after it), however many turns there are."""

from __future__ import annotations

from typing import Any

from collie.data.records import DataError
from collie.models.loss import IGNORE_INDEX


def chat_tokens(tokenizer: Any, messages: Any, origin: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{origin}: 'messages' records need a tokenizer with a chat template, and this one has "
                        "none (set tokenizer.chat_template, or use input/output records)")
    _check(messages, origin)

    def render(turns: list, prompt: bool = False) -> list[int]:
        return list(tokenizer.apply_chat_template(turns, tokenize=True, add_generation_prompt=prompt,
                                                  return_dict=False))

    ids = render(messages)
    labels = [IGNORE_INDEX] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The assistant's tokens: what this turn adds after the prompt that asks for it.
        before, through = render(messages[:i], prompt=True), render(messages[:i + 1])
        if through[:len(before)] != before or ids[:len(through)] != through:
            raise DataError(f"{origin}: the tokenizer's chat template does not render a conversation's turns as "
                            "prefixes of it, so the assistant's tokens cannot be located")
        labels[len(before):len(through)] = ids[len(before):len(through)]
    return ids, labels


def _check(messages: Any, origin: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{origin}: 'messages' must be a non-empty list of {{'role', 'content'}}")
    for k, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or \
                not isinstance(message.get("content"), str):
            raise DataError(f"{origin}: messages[{k}] must be {{'role': str, 'content': str}}, got {message!r}"[:300])
    if not any(message["role"] == "assistant" for message in messages):
        raise DataError(f"{origin}: the conversation has no assistant turn to train on")
