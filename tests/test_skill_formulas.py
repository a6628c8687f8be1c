"""Every formula block in the skills equals TRL's own loss on the same log-prob tensors."""
import math

import pytest
import torch
import torch.nn.functional as F
import yaml
from trl import DPOConfig

from skill_docs import blocks
from trl_losses import make_batch, trl_cpo_losses, trl_dpo_loss

FUNCS = {"logsigmoid": F.logsigmoid, "sigmoid": torch.sigmoid, "relu": torch.relu, "exp": torch.exp,
         "log": lambda x: torch.log(torch.as_tensor(x, dtype=torch.float64)),
         "log1p": lambda x: torch.log1p(torch.as_tensor(x, dtype=torch.float64)),
         "sort": lambda x: torch.sort(x, dim=0).values}
DPO_FORMULAS = {tag: body for f, tag, body, _ in blocks("formula") if "trl-fine-tuning" in f}
SIMPO_FORMULAS = {tag: body for f, tag, body, _ in blocks("formula") if "/simpo/" in f}
HYPER = {"beta": [0.05, 0.1, 0.5], "eps": [0.001, 0.1, 0.3], "tau": [0.05, 0.5]}


def eval_dpo(expr, b, beta, eps, tau):
    ns = dict(FUNCS, beta=beta, eps=eps, tau=tau, **{k: b[k] for k in ("pi_c", "pi_r", "ref_c", "ref_r", "n_c", "n_r")})
    ns.update(lr_c=b["pi_c"] - b["ref_c"], lr_r=b["pi_r"] - b["ref_r"])
    ns["d"] = ns["lr_c"] - ns["lr_r"]
    return float(torch.as_tensor(eval(expr, {"__builtins__": {}}, ns)).mean())


def installed_loss_types():
    help_text = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    return set(__import__("re").findall(r"`'(\w+)'`", help_text))


def test_every_installed_loss_type_has_a_formula():
    assert installed_loss_types() == set(DPO_FORMULAS), "skill formulas and installed TRL loss types differ"


@pytest.mark.parametrize("loss_type", sorted(DPO_FORMULAS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpo_formula_matches_trl(loss_type, seed):
    b = make_batch(seed)
    for beta in HYPER["beta"]:
        for eps in HYPER["eps"]:
            for tau in HYPER["tau"]:
                ours = eval_dpo(DPO_FORMULAS[loss_type], b, beta, eps, tau)
                theirs, _ = trl_dpo_loss(b, loss_type, beta=beta, label_smoothing=eps, discopop_tau=tau)
                assert math.isclose(ours, theirs, rel_tol=1e-6, abs_tol=1e-9), (loss_type, beta, eps, tau, ours, theirs)


def test_multi_loss_is_weighted_sum_of_formulas():
    b = make_batch(5)
    combo, weights = ["sigmoid", "bco_pair", "sft"], [0.8, 0.2, 1.0]
    ours = sum(w * eval_dpo(DPO_FORMULAS[t], b, 0.1, 0.0, 0.05) for t, w in zip(combo, weights))
    theirs, _ = trl_dpo_loss(b, combo, beta=0.1, loss_weights=weights)
    assert math.isclose(ours, theirs, rel_tol=1e-6)


def test_logged_rewards_are_beta_times_logratios():
    b = make_batch(3)
    _, metrics = trl_dpo_loss(b, "sigmoid", beta=0.2)
    assert math.isclose(metrics["rewards/chosen"], float(0.2 * (b["pi_c"] - b["ref_c"]).mean()), rel_tol=1e-6)
    assert math.isclose(metrics["logps/chosen"], float(b["pi_c"].mean()), rel_tol=1e-6)


def simpo_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return -torch.rand(8, generator=g, dtype=torch.float64) * 3, -torch.rand(8, generator=g, dtype=torch.float64) * 3


def eval_simpo(expr, avg_c, avg_r, beta, gamma, eps):
    return eval(expr, {"__builtins__": {}}, dict(FUNCS, avg_c=avg_c, avg_r=avg_r, beta=beta, gamma=gamma, eps=eps))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("beta,ratio", [(2.0, 0.5), (2.5, 0.55), (10.0, 0.3)])
def test_simpo_formulas_match_trl_cpo(seed, beta, ratio):
    avg_c, avg_r = simpo_inputs(seed)
    gamma = ratio * beta  # TRL's simpo_gamma; the doc's gamma_beta_ratio mapping
    theirs, rc, rr = trl_cpo_losses(avg_c, avg_r, "simpo", beta=beta, simpo_gamma=gamma)
    torch.testing.assert_close(eval_simpo(SIMPO_FORMULAS["simpo"], avg_c, avg_r, beta, gamma, 0.0), theirs)
    for eps in (0.1, 0.3):
        theirs, _, _ = trl_cpo_losses(avg_c, avg_r, "simpo", beta=beta, simpo_gamma=gamma, label_smoothing=eps)
        ours = eval_simpo(SIMPO_FORMULAS["simpo_label_smoothing"], avg_c, avg_r, beta, gamma, eps)
        torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(rc, beta * avg_c)
    # Hinge: TRL's hinge branch on averages with the rejected score shifted by gamma/beta (prefpilot's SimPO hinge).
    theirs, _, _ = trl_cpo_losses(avg_c, avg_r + gamma / beta, "hinge", beta=beta)
    torch.testing.assert_close(eval_simpo(SIMPO_FORMULAS["simpo_hinge"], avg_c, avg_r, beta, gamma, 0.0), theirs)


def test_simpo_worked_example_table():
    (ex,) = [yaml.safe_load(body) for _, tag, body, _ in blocks("worked-example") if tag == "simpo"]
    for row in ex["rows"]:
        losses, _, _ = trl_cpo_losses(torch.tensor([row["avg_c"]], dtype=torch.float64),
                                      torch.tensor([row["avg_r"]], dtype=torch.float64),
                                      "simpo", beta=ex["beta"], simpo_gamma=ex["gamma"])
        assert round(float(losses[0]), 4) == row["loss"], row


def test_dpo_start_loss_is_ln2():
    b = make_batch(0)
    b.update(ref_c=b["pi_c"].clone(), ref_r=b["pi_r"].clone())
    loss, m = trl_dpo_loss(b, "sigmoid")
    assert math.isclose(loss, math.log(2), rel_tol=1e-9) and m["rewards/accuracies"] == 0.0
