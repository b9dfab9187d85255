"""Every model family under the core layouts: each family's own checkpoint format (written from a
random init by collie), trained on dp2, ZeRO-3, tp2 and pp2 with AdamW and LOMO, in float64,
against the same family in one process."""

from transformers import MistralConfig, Qwen2Config

from collie.models.base import CollieModel
from collie.models.chatglm.config import ChatGLMv1Config
from collie.models.chatglm2.config import ChatGLMConfig
from collie.models.internlm.config import InternLMConfig
from collie.models.internlm2.config import InternLM2Config
from collie.models.moss.config import MossConfig

SHAPE = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=256,
             max_position_embeddings=256, rms_norm_eps=1e-6)
FAMILIES = {
    "qwen2": Qwen2Config(num_key_value_heads=2, **SHAPE),
    # A window shorter than the longest records (12 tokens), so it shapes the loss.
    "mistral": MistralConfig(num_key_value_heads=2, sliding_window=8, **SHAPE),
    "internlm": InternLMConfig(bias=True, **SHAPE),
    "internlm2": InternLM2Config(num_key_value_heads=2, bias=False, **SHAPE),
    "chatglm": ChatGLMConfig(num_layers=2, padded_vocab_size=256, hidden_size=64, ffn_hidden_size=128,
                             kv_channels=16, num_attention_heads=4, multi_query_group_num=2, rope_ratio=2.0),
    # The records' tokens are 1..250: [gMASK] <sop> (252, 251) are put after each record's first three.
    "chatglm_v1": ChatGLMv1Config(vocab_size=256, hidden_size=64, num_layers=2, num_attention_heads=4,
                                  inner_hidden_size=128, max_sequence_length=256, bos_token_id=251,
                                  gmask_token_id=252, mask_token_id=253, eos_token_id=2, pad_token_id=0),
    "moss": MossConfig(vocab_size=256, n_positions=256, n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_inner=128),
}
LAYOUTS = {
    "dp2": ["dp_size=2", "zero_stage=0", "train_micro_batch_size=1"],
    "zero3_dp2": ["dp_size=2", "zero_stage=3", "train_micro_batch_size=1"],
    "tp2": ["dp_size=1", "tp_size=2"],
    "pp2": ["dp_size=1", "pp_size=2", "pp_schedule=1f1b"],
}
OPTIMIZERS = {"adamw": [], "lomo": ["optimizer.name=lomo", "optimizer.lr=0.05", "optimizer.clip_grad_norm=null"]}


# Families whose records need their own special tokens: family -> (position, tokens inserted).
RECORD_INSERTS = {"chatglm_v1": (3, [252, 251])}


def records_for(family: str, records: str) -> str:
    return f"{records}.{family}.json" if family in RECORD_INSERTS else records


def write_family_records(records: str) -> None:
    import json

    with open(records) as f:
        rows = json.load(f)
    for family, (at, tokens) in RECORD_INSERTS.items():
        with open(records_for(family, records), "w") as f:
            json.dump([{"tokens": row["tokens"][:at] + tokens + row["tokens"][at:]} for row in rows], f)


def seed_dir(model_dir: str, family: str) -> str:
    return f"{model_dir}_{family}"


def write_family_seeds(model_dir: str) -> None:
    for family, config in FAMILIES.items():
        CollieModel.from_config(config, seed=1).save_pretrained(seed_dir(model_dir, family))
