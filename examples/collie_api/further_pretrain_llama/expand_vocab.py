"""CoLLiE's further pre-training with an expanded vocabulary, in CoLLiE's own API, running on
collie: the pieces of a Chinese SentencePiece model that LLaMA's tokenizer lacks are merged into
it, the embedding and the LM head grow to the new vocabulary (each new row starts at the mean of
the old ones), and only those two layers train — on 8 processes, pipeline parallel 2 × tensor
parallel 4 — with AdamW and a cosine schedule built before the Trainer, perplexity on held-out
text, and five monitors writing a CSV under ./ds_logs/.

    torchrun --nproc_per_node=8 examples/collie_api/further_pretrain_llama/expand_vocab.py

`chinese_sp.model`, a SentencePiece model of Chinese, is read from the working directory (CoLLiE
shipped one; `sentencepiece.SentencePieceTrainer.train(input="zh.txt", model_prefix="chinese_sp",
vocab_size=...)` makes one from a text file of Chinese sentences). The text is the repo's Chinese
fixture (examples/further_pretraining/fixture.jsonl); CoLLiE trained on FLORES (`facebook/flores`,
zho_Hans dev + devtest and eng_Latn devtest): point `data_files` at a JSON-lines export of it.
CoLLiE logged to Weights & Biases: `"wandb": {"enabled": True, "team": ..., "project": ...,
"group": ...}` in monitor_config does the same with wandb installed and logged in.

Each piece is merged as an added token of the model's tokenizer (its text without SentencePiece's
word-start mark "▁"), so the merge works whatever kind of tokenizer the model has. The
grown vocabulary need not be rounded up to a multiple of tp_size (CoLLiE's `+ 7`): collie shards
an uneven vocabulary. The trained model is written to ./further_pretrained (Hugging Face format,
with the merged tokenizer).
"""

import sentencepiece as spm
import torch
from datasets import load_dataset
from transformers import AutoTokenizer

from collie.config import CollieConfig
from collie.controller import EvaluatorForPerplexity, Trainer
from collie.data import CollieDatasetForTraining
from collie.metrics import PPLMetric
from collie.models.llama.model import LlamaForCausalLM
from collie.models.vocabulary import expand_vocabulary
from collie.utils.monitor import EvalMonitor, LossMonitor, LRMonitor, MemoryMonitor, TGSMonitor

pretrained_model = "decapoda-research/llama-7b-hf"
data_files = "examples/further_pretraining/fixture.jsonl"

config = CollieConfig.from_pretrained(pretrained_model)
config.pp_size = 2
config.tp_size = 4
config.dp_size = 1
config.train_micro_batch_size = 8
config.eval_batch_size = 8
config.gradient_accumulation_steps = 16
config.eval_per_n_epochs = 1
config.train_epochs = 5000
config.ds_config = {
    "fp16": {"enabled": True},
    "monitor_config": {"enabled": True, "tag": "further_pretrain_llama",
                       "csv_monitor": {"enabled": True, "output_path": "./ds_logs/"}},
}

# Merge the vocabulary: every piece of the Chinese SentencePiece model the tokenizer does not
# already encode as one token becomes a token of its own (`expand_vocabulary` below).
tokenizer = AutoTokenizer.from_pretrained(pretrained_model)
chinese_sp_model = spm.SentencePieceProcessor(model_file="./chinese_sp.model")
pieces = [chinese_sp_model.id_to_piece(i) for i in range(chinese_sp_model.get_piece_size())
          if not (chinese_sp_model.is_control(i) or chinese_sp_model.is_unknown(i) or chinese_sp_model.is_byte(i))]
pieces = [piece.replace("▁", "") for piece in pieces if piece.replace("▁", "")]

model = LlamaForCausalLM.from_pretrained(pretrained_model, config=config)
added = expand_vocabulary(model, tokenizer, pieces)  # the tokenizer and the model's embedding and head grow together
print(f"merged {added} pieces of chinese_sp.model: the vocabulary has {len(tokenizer)} tokens")

# Chinese text for further pre-training, tokenized with the merged tokenizer, 1% held out
# (CollieDatasetForTraining ends each text with eos).
texts = [{"text": sample["text"]} for sample in load_dataset("json", data_files=data_files, split="train")]
dataset = CollieDatasetForTraining(texts, tokenizer=tokenizer, shuffle=True, seed=42)
held_out = max(1, int(len(dataset) * 0.01))
eval_dataset, train_dataset = dataset[:held_out], dataset[held_out:]

# Only the embedding and the LM head train: the new tokens are learnt fast while the rest of
# the model stays as it was.
for p in model.parameters():
    p.requires_grad = False
if model.get_input_embedding()[1] is not None:
    model.get_input_embedding()[1].weight.requires_grad = True
if model.get_lm_head()[1] is not None:
    model.get_lm_head()[1].weight.requires_grad = True
optimizer = torch.optim.AdamW(filter(lambda p: p.requires_grad, model.parameters()), lr=2e-4)
lr_scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.train_epochs * len(train_dataset),
                                                          eta_min=0)

evaluator = EvaluatorForPerplexity(model=model, config=config, dataset=eval_dataset,
                                   metrics={"ppl": PPLMetric(gather_result=True)})
trainer = Trainer(model=model, config=config, train_dataset=train_dataset, optimizer=optimizer,
                  lr_scheduler=lr_scheduler, tokenizer=tokenizer,
                  monitors=[LossMonitor(config), TGSMonitor(config), MemoryMonitor(config), EvalMonitor(config),
                            LRMonitor(config)],
                  evaluators=[evaluator])
trainer.train()
trainer.save_model("./further_pretrained")
