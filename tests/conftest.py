import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "assets")
sys.path.insert(0, os.path.join(ROOT, "tests"))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path

    return AutoTokenizer.from_pretrained(bundled_tokenizer_path())
