"""Run under torchrun (2 processes). Modes:

reshard MODEL RECORDS OUT — checkpoints written under tp2 resume under dp2; dp2 resume (AdamW and
                            AdaLomo) is bit-exact.
kill MODEL RECORDS OUT    — under `--max-restarts=2` and torchrun's defaults (its shared store), rank 1
                            SIGKILLs itself after step 3 on the first attempt, rank 0 after step 5 on
                            the second; each restart resumes from `latest`, the third attempt finishes.
object_store MODEL RECORDS OUT — `kill` with the model, output_dir and export in an object store
                            (MODEL and OUT are s3:// URLs).
stall MODEL RECORDS OUT   — rank 1 sleeps forever after step 3 on the first attempt; with dist_timeout_s
                            rank 0's next collective fails, torchrun restarts both, the job finishes.
"""

import json
import os
import signal
import sys
import time

import torch.distributed as dist

from collie import CollieConfig, storage
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.trainer import Callback, Trainer

TP2 = ["dp_size=1", "tp_size=2", "train_micro_batch_size=2"]
DP2 = ["dp_size=2", "train_micro_batch_size=1"]


class Losses(Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


# restart attempt -> (step, rank) that dies
KILLS = {"0": (3, 1), "1": (5, 0)}


class KillTwice(Callback):
    def on_train_batch_end(self, trainer, loss):
        kill = KILLS.get(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        if kill == (trainer.global_step, dist.get_rank()):
            os.kill(os.getpid(), signal.SIGKILL)


class StallOnce(Callback):
    def on_train_batch_end(self, trainer, loss):
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and trainer.global_step == 3 and dist.get_rank() == 1:
            time.sleep(10**6)


def trainer_for(model_dir, records, out, overrides, callbacks):
    # float64: runs on different layouts are compared to 1e-9 (fp32 rounding would depend on the machine).
    config = CollieConfig.load(None, ["gradient_accumulation_steps=2", "max_steps=6", "logging=[csv]",
                                      "param_dtype=float64", "optimizer.lr=0.01", "optimizer.clip_grad_norm=1.0",
                                      f"output_dir={out}",
                                      *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    with open(records) as f:
        dataset = CollieDatasetForTraining(json.load(f))
    return Trainer(model, config, train_dataset=dataset, callbacks=callbacks)


def run(model_dir, records, out, overrides, resume_from=None, extra=()):
    losses = Losses()
    trainer_for(model_dir, records, out, overrides, [losses, *extra]).train(resume_from=resume_from)
    return losses.values


def main() -> None:
    mode, model_dir, records, out = sys.argv[1:5]
    results = {}
    if mode == "reshard":
        results["tp2"] = run(model_dir, records, f"{out}/tp2", TP2 + ["checkpoint_every_n_steps=3"])
        results["tp2_to_dp2"] = run(model_dir, records, f"{out}/dp2_from_tp2", DP2,
                                    resume_from=f"{out}/tp2/checkpoints/step-3")
        results["dp2"] = run(model_dir, records, f"{out}/dp2", DP2 + ["checkpoint_every_n_steps=3"])
        results["dp2_resumed"] = run(model_dir, records, f"{out}/dp2_resumed", DP2,
                                     resume_from=f"{out}/dp2/checkpoints/step-3")
        # Checkpoints written in the background (their own gloo group) resume the same way.
        results["dp2_async"] = run(model_dir, records, f"{out}/dp2_async",
                                   DP2 + ["checkpoint_every_n_steps=3", "checkpoint_async=true"])
        results["dp2_async_resumed"] = run(model_dir, records, f"{out}/dp2_async_resumed", DP2,
                                           resume_from=f"{out}/dp2_async/checkpoints/step-3")
        adalomo = DP2 + ["optimizer.name=adalomo"]
        results["adalomo_dp2"] = run(model_dir, records, f"{out}/adalomo", adalomo + ["checkpoint_every_n_steps=3"])
        results["adalomo_dp2_resumed"] = run(model_dir, records, f"{out}/adalomo_resumed", adalomo,
                                             resume_from=f"{out}/adalomo/checkpoints/step-3")
    elif mode in ("kill", "object_store"):
        losses = Losses()
        trainer = trainer_for(model_dir, records, f"{out}/killed", DP2 + ["checkpoint_every_n_steps=2"],
                              [losses, KillTwice()])
        trainer.train()
        results["after_restart"] = losses.values
        if mode == "object_store":
            trainer.save_model(f"{out}/killed/final")
    else:
        results["after_restart"] = run(model_dir, records, f"{out}/stalled",
                                       DP2 + ["checkpoint_every_n_steps=2", "dist_timeout_s=5"], extra=[StallOnce()])
    if dist.get_rank() == 0:
        storage.write_text(f"{out}/{mode}.json", json.dumps(results))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
