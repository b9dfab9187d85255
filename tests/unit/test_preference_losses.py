"""The preference losses in float64: each against its formula worked by hand (value and gradient
with respect to the policy's log-probabilities), and the same batch through trl's own code."""

import copy
import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

from collie.data.collate import ColliePadder
from collie.data.preference import CollieDatasetForPreference, PreferenceCollator
from collie.models.loss import causal_lm_loss
from collie.preference import PreferenceLoss, SequenceLogps, dpo, hinge, ipo, orpo, sequence_logps, simpo
from collie.preference.losses import log1mexp
from collie.tokenization import pad_token_id

DT = torch.float64
# trl (a dev dependency) is imported inside the tests that compare with it: it takes seconds to import.
needs_trl = pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl is not installed")


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def leaf(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=DT, requires_grad=True)


# Two pairs: summed log-probs of the policy (chosen, rejected), of the reference, and token counts.
PC, PR, RC, RR, NC, NR = (-4.0, -7.5), (-6.0, -5.0), (-4.5, -7.0), (-5.0, -6.5), (3, 5), (4, 2)


def grads(output, *inputs):
    return torch.autograd.grad(output.losses.sum(), inputs)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dpo_by_hand(smoothing):
    beta = 0.3
    pc, pr = leaf(*PC), leaf(*PR)
    out = dpo(pc, pr, torch.tensor(RC, dtype=DT), torch.tensor(RR, dtype=DT), beta, smoothing)
    dc, dr = grads(out, pc, pr)
    for i in range(2):
        z = beta * ((PC[i] - RC[i]) - (PR[i] - RR[i]))
        assert out.losses[i].item() == pytest.approx(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z),
                                                     abs=1e-12)
        # dL/dz = σ(z) − (1 − ε); z grows with the chosen log-prob and falls with the rejected one.
        assert dc[i].item() == pytest.approx(beta * (sigmoid(z) - 1 + smoothing), abs=1e-12)
        assert dr[i].item() == pytest.approx(-beta * (sigmoid(z) - 1 + smoothing), abs=1e-12)
        assert out.rewards_chosen[i].item() == pytest.approx(beta * (PC[i] - RC[i]), abs=1e-12)
        assert out.rewards_rejected[i].item() == pytest.approx(beta * (PR[i] - RR[i]), abs=1e-12)
    assert not out.rewards_chosen.requires_grad
    assert out.reward_margin.tolist() == pytest.approx((out.rewards_chosen - out.rewards_rejected).tolist())
    assert out.reward_accuracy.tolist() == [1.0, 0.0]


def test_ipo_by_hand():
    beta = 0.25
    pc, pr = leaf(*PC), leaf(*PR)
    out = ipo(pc, pr, torch.tensor(RC, dtype=DT), torch.tensor(RR, dtype=DT), torch.tensor(NC), torch.tensor(NR), beta)
    dc, dr = grads(out, pc, pr)
    for i in range(2):
        d = (PC[i] - RC[i]) / NC[i] - (PR[i] - RR[i]) / NR[i] - 1 / (2 * beta)
        assert out.losses[i].item() == pytest.approx(d * d, abs=1e-12)
        assert dc[i].item() == pytest.approx(2 * d / NC[i], abs=1e-12)
        assert dr[i].item() == pytest.approx(-2 * d / NR[i], abs=1e-12)
        assert out.rewards_chosen[i].item() == pytest.approx(beta * (PC[i] - RC[i]), abs=1e-12)


def test_hinge_by_hand():
    beta = 0.5
    pc, pr = leaf(-1.0, -1.0), leaf(-2.0, -9.0)
    out = hinge(pc, pr, torch.tensor([-1.5, -1.0], dtype=DT), torch.tensor([-1.5, -1.0], dtype=DT), beta)
    dc, dr = grads(out, pc, pr)
    # Pair 0: β·Δ = 0.5·(0.5 + 0.5) = 0.5 < 1, loss 0.5, slope −β; pair 1: β·Δ = 4 ≥ 1, loss and slope 0.
    assert out.losses.tolist() == pytest.approx([0.5, 0.0], abs=1e-12)
    assert dc.tolist() == [-beta, 0.0] and dr.tolist() == [beta, 0.0]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_simpo_by_hand(smoothing):
    beta, gamma = 2.0, 0.5
    ac, ar = leaf(-0.8, -1.5), leaf(-1.2, -1.1)
    out = simpo(ac, ar, beta, gamma, smoothing)
    dc, dr = grads(out, ac, ar)
    for i, (c, r) in enumerate(zip((-0.8, -1.5), (-1.2, -1.1))):
        z = beta * (c - r) - gamma
        assert out.losses[i].item() == pytest.approx(-(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z),
                                                     abs=1e-12)
        assert dc[i].item() == pytest.approx(beta * (sigmoid(z) - 1 + smoothing), abs=1e-12)
        assert dr[i].item() == pytest.approx(-beta * (sigmoid(z) - 1 + smoothing), abs=1e-12)
        assert out.rewards_chosen[i].item() == pytest.approx(beta * c, abs=1e-12)
        assert out.rewards_rejected[i].item() == pytest.approx(beta * r, abs=1e-12)


def test_orpo_by_hand():
    lam = 0.25
    values_c, values_r = (-0.3, -2.0), (-1.1, -0.2)  # both sides of −ln 2, where log1mexp switches branch
    ac, ar = leaf(*values_c), leaf(*values_r)
    out = orpo(ac, ar, lam)
    dc, dr = grads(out, ac, ar)
    for i, (c, r) in enumerate(zip(values_c, values_r)):
        log_odds = (c - math.log(1 - math.exp(c))) - (r - math.log(1 - math.exp(r)))
        assert out.losses[i].item() == pytest.approx(-c - lam * log_sigmoid(log_odds), abs=1e-12)
        # d log_odds / d ā_c = 1 + eᶜ/(1 − eᶜ) = 1/(1 − eᶜ); the NLL term adds −1.
        assert dc[i].item() == pytest.approx(-1 - lam * (1 - sigmoid(log_odds)) / (1 - math.exp(c)), abs=1e-12)
        assert dr[i].item() == pytest.approx(lam * (1 - sigmoid(log_odds)) / (1 - math.exp(r)), abs=1e-12)
        assert out.rewards_chosen[i].item() == pytest.approx(lam * c, abs=1e-12)


def test_sequence_logps_against_log_softmax():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11, dtype=DT)
    labels = torch.randint(0, 11, (3, 6))
    labels[:, :2] = -100
    labels[1, 4:] = -100
    out = sequence_logps(logits, labels)
    table = logits.log_softmax(-1)
    for row in range(3):
        want = sum(table[row, t - 1, labels[row, t]].item() for t in range(1, 6) if labels[row, t] != -100)
        count = int((labels[row, 1:] != -100).sum())
        assert out.summed[row].item() == pytest.approx(want, abs=1e-12)
        assert out.tokens[row].item() == count
        assert out.average[row].item() == pytest.approx(want / count, abs=1e-12)
        # The same token positions and numbers as collie's language-modelling loss.
        assert -out.summed[row].item() == pytest.approx(
            causal_lm_loss(logits[row:row + 1], labels[row:row + 1], reduction="sum").item(), abs=1e-12)
    assert out.summed.dtype == DT
    assert sequence_logps(logits.to(torch.bfloat16), labels).summed.dtype == torch.float32


def test_preference_loss_object_splits_pairs_and_checks_settings():
    summed = torch.tensor([*PC, *PR], dtype=DT)
    tokens = torch.tensor([*NC, *NR])
    reference = torch.tensor([*RC, *RR], dtype=DT)
    policy = SequenceLogps(summed, tokens)
    out = PreferenceLoss("ipo", beta=0.25)(policy, reference)
    want = ipo(summed[:2], summed[2:], reference[:2], reference[2:], tokens[:2], tokens[2:], 0.25)
    assert torch.equal(out.losses, want.losses)
    out = PreferenceLoss("orpo", orpo_lambda=0.5)(SequenceLogps(summed / 10, tokens))
    assert torch.equal(out.losses, orpo(summed[:2] / 10 / tokens[:2], summed[2:] / 10 / tokens[2:], 0.5).losses)
    assert PreferenceLoss("dpo").needs_reference and not PreferenceLoss("simpo").needs_reference
    with pytest.raises(ValueError, match="needs reference"):
        PreferenceLoss("dpo")(policy)
    with pytest.raises(ValueError, match="takes no reference"):
        PreferenceLoss("simpo")(policy, reference)
    for kwargs, match in [({"loss": "kto"}, "preference.loss"), ({"beta": 0.0}, "preference.beta"),
                          ({"beta": float("nan")}, "preference.beta"), ({"label_smoothing": 0.5}, "label_smoothing"),
                          ({"loss": "ipo", "label_smoothing": 0.1}, "dpo and simpo only"),
                          ({"orpo_lambda": -1.0}, "orpo_lambda"), ({"simpo_gamma": float("inf")}, "simpo_gamma")]:
        with pytest.raises(ValueError, match=match):
            PreferenceLoss(**kwargs)


# -- a tiny float64 model: step 1 with reference = policy, and the same batch through trl ---------------------------

@pytest.fixture(scope="module")
def setup(bundled_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(bundled_tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(DT)
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a reference that differs from the policy, so that every reward is non-zero
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    records = [{"prompt": "Question: what is 2+2?\nAnswer:", "chosen": " 4", "rejected": " five"},
               {"prompt": "Say hi", "chosen": " hi there", "rejected": " go away now"},
               {"prompt": "Name a colour.", "chosen": " Blue.", "rejected": " A fish."}]
    collate = PreferenceCollator(ColliePadder(pad_token_id(bundled_tokenizer)))
    batch = collate(list(CollieDatasetForPreference(records, bundled_tokenizer)))
    return SimpleNamespace(model=model, reference=reference, records=records, batch=batch,
                           dataset=Dataset.from_list(records))


def collie_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sequence_logps(logits, batch["labels"])


def test_dpo_with_the_reference_equal_to_the_policy_is_ln2_at_step_1(setup):
    policy = collie_logps(setup.model, setup.batch)
    with torch.no_grad():
        reference = collie_logps(setup.model, setup.batch).summed
    out = PreferenceLoss("dpo", beta=0.1)(policy, reference)
    assert out.losses.mean().item() == pytest.approx(math.log(2), abs=1e-12)
    assert out.reward_margin.abs().max().item() == 0.0


def gradients(model) -> dict:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


class Float64Head(torch.nn.Module):
    """What trl's fused LM head returns (`log_probs` of the shifted labels, 0 where −100, and the
    per-token statistics `_compute_loss` logs), made with trl's own `selective_log_softmax` from
    whole logits: trl's kernel accumulates in float32, which would hide a 1e-9 disagreement."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache=False):
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax  # see needs_trl

        assert fused_lm_head
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
        labels = labels[:, 1:]
        mask = labels != -100
        return SimpleNamespace(log_probs=selective_log_softmax(logits, labels.clamp(min=0)) * mask,
                               entropy=entropy_from_logits(logits), mean_logits=logits.mean(-1),
                               is_top1=logits.argmax(-1) == labels)


@needs_trl
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_dpo_family_equals_trl_dpo_trainer(setup, bundled_tokenizer, tmp_path, loss_type):
    """`DPOTrainer.compute_loss` of trl's collated batch, with trl's fused head (float32) and with
    trl's log-softmax in float64, against collie on collie's batch of the same records."""
    from trl import DPOConfig, DPOTrainer  # see needs_trl

    beta = {"sigmoid": 0.5, "ipo": 0.5, "hinge": 2.0}[loss_type]
    trl_model, trl_reference = copy.deepcopy(setup.model), copy.deepcopy(setup.reference)
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, bf16=False, loss_type=[loss_type],
                     beta=beta, per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=trl_model, ref_model=trl_reference, args=args, train_dataset=setup.dataset,
                         processing_class=bundled_tokenizer)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert torch.equal(inputs["input_ids"] * inputs["attention_mask"],
                       setup.batch["input_ids"] * setup.batch["attention_mask"])
    fused_loss = trainer.compute_loss(trl_model, inputs).item()
    trainer.ref_model = Float64Head(trl_reference)
    trl_loss = trainer.compute_loss(Float64Head(trl_model), inputs)
    trl_loss.backward()

    model = copy.deepcopy(setup.model)
    with torch.no_grad():
        reference = collie_logps(setup.reference, setup.batch).summed
    out = PreferenceLoss({"sigmoid": "dpo"}.get(loss_type, loss_type), beta=beta)(collie_logps(model, setup.batch),
                                                                                   reference)
    loss = out.losses.mean()
    loss.backward()
    assert loss.item() == pytest.approx(trl_loss.item(), abs=1e-9)
    assert loss.item() == pytest.approx(fused_loss, rel=1e-5)
    assert out.losses.gt(0).any()  # for the hinge: a pair on its sloped side, where gradients flow
    mine, theirs = gradients(model), gradients(trl_model)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert torch.allclose(mine[name], theirs[name], rtol=0, atol=1e-9), name
    logged = {key: values[-1] for key, values in trainer._metrics["train"].items()}
    assert logged["rewards/chosen"] == pytest.approx(out.rewards_chosen.mean().item(), abs=1e-9)
    assert logged["rewards/rejected"] == pytest.approx(out.rewards_rejected.mean().item(), abs=1e-9)
    assert logged["rewards/margins"] == pytest.approx(out.reward_margin.mean().item(), abs=1e-9)
    # trl counts its accuracies in float32 (`.float()`).
    assert logged["rewards/accuracies"] == pytest.approx(out.reward_accuracy.mean().item(), abs=1e-7)


def cpo_self(loss_type: str, beta: float, label_smoothing: float = 0.0, simpo_gamma: float = 0.5) -> SimpleNamespace:
    """The attributes `CPOTrainer.cpo_loss` and `ORPOTrainer.odds_ratio_loss` read, without a Trainer."""
    return SimpleNamespace(loss_type=loss_type, beta=beta, label_smoothing=label_smoothing, simpo_gamma=simpo_gamma,
                           alpha=0.0, accelerator=SimpleNamespace(device=torch.device("cpu")))


@needs_trl
def test_cdpo_equals_trl_label_smoothed_sigmoid():
    """trl 1.16 keeps cDPO's smoothed sigmoid in `CPOTrainer.cpo_loss` (DPOTrainer's "sigmoid" has
    no smoothing); fed the DPO log-ratios it is DPO's loss."""
    from trl.experimental.cpo import CPOTrainer  # see needs_trl

    beta, smoothing = 0.4, 0.15
    pc, pr = leaf(*PC), leaf(*PR)
    rc, rr = torch.tensor(RC, dtype=DT), torch.tensor(RR, dtype=DT)
    out = dpo(pc, pr, rc, rr, beta, smoothing)
    pc2, pr2 = leaf(*PC), leaf(*PR)
    theirs, _, _ = CPOTrainer.cpo_loss(cpo_self("sigmoid", beta, smoothing), pc2 - rc, pr2 - rr)
    assert torch.allclose(out.losses, theirs, rtol=0, atol=1e-12)
    for a, b in zip(grads(out, pc, pr), torch.autograd.grad(theirs.sum(), (pc2, pr2))):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)


@needs_trl
def test_simpo_equals_trl_cpo_trainer(setup):
    """The same logits through trl's `get_batch_logps(average_log_prob=True)` + `cpo_loss` ("simpo",
    cpo_alpha 0: no NLL term) and through collie."""
    from trl.experimental.cpo import CPOTrainer  # see needs_trl

    beta, gamma, smoothing = 2.0, 0.7, 0.1
    model, trl_model = copy.deepcopy(setup.model), copy.deepcopy(setup.model)
    batch = setup.batch
    logits = trl_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    average = CPOTrainer.get_batch_logps(logits, batch["labels"].clone(), average_log_prob=True)
    chosen, rejected = average.chunk(2)
    theirs, trl_rewards_chosen, trl_rewards_rejected = CPOTrainer.cpo_loss(
        cpo_self("simpo", beta, smoothing, gamma), chosen, rejected)
    theirs.mean().backward()

    policy = collie_logps(model, batch)
    assert torch.allclose(policy.average, average, rtol=0, atol=1e-12)
    out = PreferenceLoss("simpo", beta=beta, simpo_gamma=gamma, label_smoothing=smoothing)(policy)
    out.losses.mean().backward()
    assert out.losses.mean().item() == pytest.approx(theirs.mean().item(), abs=1e-9)
    assert torch.allclose(out.rewards_chosen, trl_rewards_chosen, atol=1e-12)
    assert torch.allclose(out.rewards_rejected, trl_rewards_rejected, atol=1e-12)
    mine, trls = gradients(model), gradients(trl_model)
    for name in mine:
        assert torch.allclose(mine[name], trls[name], rtol=0, atol=1e-9), name


@needs_trl
def test_orpo_odds_ratio_equals_trl():
    """trl's `odds_ratio_loss` casts to float32 (`.float()`), so it is met at float32 precision;
    its `log1mexp`, which keeps the dtype, at float64."""
    from trl.experimental.orpo import ORPOTrainer  # see needs_trl
    from trl.experimental.orpo.orpo_trainer import log1mexp as trl_log1mexp  # see needs_trl

    x = torch.tensor([-3.0, -0.7, -0.69, -1e-3, -40.0], dtype=DT)
    assert torch.allclose(log1mexp(x), trl_log1mexp(x), rtol=1e-15, atol=0)
    lam = 0.3
    chosen, rejected = torch.tensor([-0.4, -1.7, -0.9], dtype=DT), torch.tensor([-0.9, -0.6, -2.5], dtype=DT)
    terms, rewards_chosen, rewards_rejected, _, _ = ORPOTrainer.odds_ratio_loss(cpo_self("orpo", lam), chosen, rejected)
    out = orpo(chosen, rejected, lam)
    # trl's loss: NLL − mean(λ·log σ(log odds)); its per-pair terms are the odds-ratio part of ours.
    assert torch.allclose(out.losses + chosen, -terms.to(DT), rtol=1e-6, atol=0)
    assert torch.allclose(out.rewards_chosen, rewards_chosen.to(DT), rtol=1e-6)
    assert torch.allclose(out.rewards_rejected, rewards_rejected.to(DT), rtol=1e-6)
