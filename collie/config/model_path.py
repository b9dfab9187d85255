"""Where a model named by CoLLiE's scripts lives: a local directory, a URL, or a Hugging Face hub
id found in the local cache. collie never downloads (and never runs a checkpoint's code)."""

from __future__ import annotations

import json
import logging
import os
import re

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from transformers import CONFIG_MAPPING, AutoConfig, PretrainedConfig

from collie.config.errors import ConfigError

log = logging.getLogger("collie")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model_path(name_or_path: str) -> str:
    """`name_or_path` itself when it is a directory or a URL; a hub id (`org/name`) that is not a
    directory is looked up in the local Hugging Face cache."""
    if os.path.isdir(name_or_path) or "://" in name_or_path or not _HUB_ID.match(name_or_path):
        return name_or_path
    try:
        path = snapshot_download(name_or_path, local_files_only=True)
    except LocalEntryNotFoundError:
        raise ConfigError(f"model: {name_or_path!r} is neither a directory nor in the Hugging Face cache "
                          f"({constants.HF_HUB_CACHE}); collie downloads nothing: fetch it first "
                          f"(`huggingface-cli download {name_or_path}`) or give its directory") from None
    log.info("model: %s found in the Hugging Face cache at %s", name_or_path, path)
    return path


def read_model_config(path: str) -> PretrainedConfig:
    """The architecture in `path/config.json`: transformers' config class when transformers ships
    the family, else a plain `PretrainedConfig` holding every field (collie's model classes read
    it with their own config class; the checkpoint's code is never run)."""
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ConfigError(f"model: no config.json in {path!r} (expected a Hugging Face model directory)")
    with open(config_file) as f:
        fields = json.load(f)
    if fields.get("model_type") in CONFIG_MAPPING:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    return PretrainedConfig(**fields)
