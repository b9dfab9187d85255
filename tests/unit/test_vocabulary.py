"""Vocabulary expansion: new tokens, embedding and head grown with mean-initialised rows, the
export loaded by transformers with the new tokenizer (same logits), clear errors."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from collie.cli import main
from collie.models.base import CollieModel, load_tokenizer
from collie.models.vocabulary import expand_vocabulary, resize_vocabulary

NEW = ["你好", "世界", "训练", "collie"]


@pytest.fixture
def base(tmp_path):
    path = str(tmp_path / "base")
    assert main(["init-model", "--shape", "tiny", path]) == 0
    return path


def test_new_rows_are_the_mean_and_transformers_loads_the_export(base, tmp_path):
    model, tokenizer = CollieModel.from_pretrained(base), load_tokenizer(base)
    old_embedding, old_head = model.embed_tokens.weight.detach().clone(), model.lm_head.weight.detach().clone()
    old_size = len(tokenizer)
    known = tokenizer.decode([300])  # already one token: not added again
    assert expand_vocabulary(model, tokenizer, NEW + [known, NEW[0]]) == 4
    assert len(tokenizer) == old_size + 4 == model.config.vocab_size == model.embed_tokens.weight.shape[0]
    assert torch.equal(model.embed_tokens.weight[:old_size], old_embedding)
    assert torch.equal(model.lm_head.weight[:old_size], old_head)
    for new, old in ((model.embed_tokens.weight, old_embedding), (model.lm_head.weight, old_head)):
        assert torch.allclose(new[old_size:], old.double().mean(0).float().expand(4, -1), atol=0, rtol=0)
    out = str(tmp_path / "expanded")
    model.save_pretrained(out, tokenizer=tokenizer)
    hf, hf_tokenizer = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ids = hf_tokenizer("你好世界, collie 训练")["input_ids"]
    assert set(range(old_size, old_size + 4)) <= set(ids)  # each new token is one id
    with torch.no_grad():
        ours, theirs = model(torch.tensor([ids])).logits, hf(torch.tensor([ids])).logits
    assert ours.shape[-1] == old_size + 4 and (ours - theirs).abs().max() <= 1e-5


def test_expand_vocab_command(base, tmp_path, capsys):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(NEW) + "\n\n")
    out = str(tmp_path / "out")
    assert main(["expand-vocab", base, out, "--tokens-file", str(tokens)]) == 0
    assert "added 4 of 4 tokens (0 were already known): vocabulary 4096 → 4100" in capsys.readouterr().out
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == len(AutoTokenizer.from_pretrained(out))


def test_bad_expansions_are_one_line(base):
    model, tokenizer = CollieModel.from_pretrained(base), load_tokenizer(base)
    with pytest.raises(ValueError, match="tokens: give a non-empty list of non-empty strings"):
        expand_vocabulary(model, tokenizer, [])
    with pytest.raises(ValueError, match="the tokenizer has 10 tokens, fewer than the model's 4096"):
        resize_vocabulary(model, 10)

