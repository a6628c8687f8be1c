"""Run TRL's *own* loss code on log-prob tensors we choose.

`DPOTrainer._compute_loss` takes a model; we pass a stand-in model whose forward
returns the per-token log-probs we constructed, and precomputed reference log-probs,
so every line of TRL's loss arithmetic runs unchanged. `CPOTrainer.cpo_loss` takes
log-probs directly.
"""
from collections import defaultdict
from types import SimpleNamespace

import torch
from accelerate import Accelerator
from trl import DPOTrainer
from trl.experimental.cpo import CPOTrainer

_ACC = None


def accelerator():
    """One CPU Accelerator, made again when something (building a TRL/transformers config) reset accelerate's
    shared state, which leaves an existing Accelerator without a device."""
    global _ACC
    from accelerate.state import AcceleratorState
    if _ACC is None or not AcceleratorState._shared_state:
        _ACC = Accelerator(cpu=True)
    return _ACC


def make_batch(seed: int = 0, pairs: int = 6, prompt_len: int = 3, max_completion: int = 7):
    """Random per-token log-probs for `pairs` chosen/rejected completions of varying length."""
    g = torch.Generator().manual_seed(seed)
    T = prompt_len + max_completion
    lengths = torch.randint(2, max_completion + 1, (2 * pairs,), generator=g)
    completion_mask = torch.zeros(2 * pairs, T, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        completion_mask[i, prompt_len:prompt_len + n] = 1
    attention_mask = torch.zeros_like(completion_mask)
    for i, n in enumerate(lengths.tolist()):
        attention_mask[i, :prompt_len + n] = 1
    shift = completion_mask[:, 1:].float()
    per_token = -torch.rand(2 * pairs, T - 1, generator=g, dtype=torch.float64) * 2.0 * shift
    ref_per_token = -torch.rand(2 * pairs, T - 1, generator=g, dtype=torch.float64) * 2.0 * shift
    logps, ref_logps = per_token.sum(1), ref_per_token.sum(1)
    n = shift.sum(1).double()
    return {
        "per_token": per_token, "completion_mask": completion_mask, "attention_mask": attention_mask,
        "pi_c": logps[:pairs], "pi_r": logps[pairs:], "ref_c": ref_logps[:pairs], "ref_r": ref_logps[pairs:],
        "n_c": n[:pairs], "n_r": n[pairs:],
    }


def trl_dpo_loss(batch, loss_type, beta=0.1, label_smoothing=0.0, discopop_tau=0.05, loss_weights=None,
                 use_weighting=False, log_sum_sq_probs=None, ld_alpha=None, f_divergence_type="reverse_kl",
                 f_alpha_divergence_coef=0.5, per_token=None):
    """The loss DPOTrainer computes for this batch, through DPOTrainer._compute_loss itself. `log_sum_sq_probs`
    (per token, for WPO) defaults to zeros; `per_token` replaces the batch's policy log-probs (e.g. a leaf that
    requires grad)."""
    loss_types = loss_type if isinstance(loss_type, list) else [loss_type]
    per_token = batch["per_token"] if per_token is None else per_token

    def model(**kwargs):
        z = torch.zeros_like(per_token)
        return SimpleNamespace(log_probs=per_token, entropy=z.detach(), mean_logits=z.detach(),
                               is_top1=torch.zeros_like(per_token, dtype=torch.bool),
                               log_sum_sq_probs=z if log_sum_sq_probs is None else log_sum_sq_probs)

    fake_self = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=accelerator(), aux_loss_enabled=False, ld_alpha=ld_alpha,
        precompute_ref_logps=True, f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha_divergence_coef,
        loss_types=loss_types, loss_weights=loss_weights or [1.0] * len(loss_types), beta=beta,
        label_smoothing=label_smoothing, use_weighting=use_weighting, args=SimpleNamespace(discopop_tau=discopop_tau),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)}, _total_train_tokens=0, _tp_size=1,
    )
    T = per_token.shape[1] + 1
    inputs = {"input_ids": torch.ones(per_token.shape[0], T, dtype=torch.long),
              "attention_mask": batch["attention_mask"], "completion_mask": batch["completion_mask"],
              "ref_chosen_logps": batch["ref_c"], "ref_rejected_logps": batch["ref_r"]}
    loss = DPOTrainer._compute_loss(fake_self, model, inputs, False)
    metrics = {k: v[-1] for k, v in fake_self._metrics["train"].items()}
    return (loss if per_token.requires_grad else float(loss)), metrics


def trl_cpo_losses(avg_c, avg_r, loss_type="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.0):
    """Per-pair losses from CPOTrainer.cpo_loss on (already averaged) log-probs."""
    fake_self = SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, simpo_gamma=simpo_gamma,
                                label_smoothing=label_smoothing, accelerator=accelerator())
    losses, chosen_rewards, rejected_rewards = CPOTrainer.cpo_loss(fake_self, avg_c, avg_r)
    return losses, chosen_rewards, rejected_rewards
