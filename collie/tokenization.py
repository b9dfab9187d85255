"""Tokenizer facts every room needs the same answer to."""

from __future__ import annotations

import os
import shutil

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt")


def pad_token_id(tokenizer) -> int:
    """The id padding uses: the tokenizer's pad token, else its (first) EOS — LLaMA and GPT-2
    tokenizers set no pad token — else 0. Padded positions are masked, so only consistency matters."""
    if tokenizer is None:
        return 0
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def copy_tokenizer_files(src: str, dst: str) -> None:
    """The tokenizer files of directory `src` copied into `dst` (those it has)."""
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
