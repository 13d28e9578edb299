"""DPO's loss and its variants against their closed forms, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tunelab.objectives.dpo import preference_loss

PW, PL, RW, RL = (torch.tensor([-3.0, -7.5]), torch.tensor([-4.0, -6.0]), torch.tensor([-3.5, -7.0]),
                  torch.tensor([-3.8, -6.2]))


def by_hand_h(i: int) -> float:
    return (PW[i].item() - RW[i].item()) - (PL[i].item() - RL[i].item())


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_sigmoid_loss_is_minus_log_sigmoid_of_beta_times_the_log_ratio_difference(beta):
    out = preference_loss(PW, PL, RW, RL, beta)
    for i in range(2):
        expected = -math.log(1 / (1 + math.exp(-beta * by_hand_h(i))))
        assert out.loss[i].item() == pytest.approx(expected, rel=1e-6)
        assert out.chosen_rewards[i].item() == pytest.approx(beta * (PW[i] - RW[i]).item(), rel=1e-6)
        assert out.rejected_rewards[i].item() == pytest.approx(beta * (PL[i] - RL[i]).item(), rel=1e-6)
    assert out.accuracies.tolist() == [float(out.chosen_rewards[i] > out.rejected_rewards[i]) for i in range(2)]


def test_label_smoothing_mixes_in_the_flipped_preference():
    beta, eps = 0.2, 0.1
    out = preference_loss(PW, PL, RW, RL, beta, label_smoothing=eps)
    for i in range(2):
        z = beta * by_hand_h(i)
        expected = -(1 - eps) * math.log(1 / (1 + math.exp(-z))) - eps * math.log(1 / (1 + math.exp(z)))
        assert out.loss[i].item() == pytest.approx(expected, rel=1e-6)


def test_ipo_and_hinge_closed_forms():
    beta = 0.25
    ipo, hinge = preference_loss(PW, PL, RW, RL, beta, "ipo"), preference_loss(PW, PL, RW, RL, beta, "hinge")
    for i in range(2):
        assert ipo.loss[i].item() == pytest.approx((by_hand_h(i) - 1 / (2 * beta)) ** 2, rel=1e-6)
        assert hinge.loss[i].item() == pytest.approx(max(0.0, 1 - beta * by_hand_h(i)), rel=1e-6, abs=1e-7)


def test_the_policy_equal_to_the_reference_gives_log_2_and_zero_rewards():
    out = preference_loss(PW, PL, PW.clone(), PL.clone(), beta=0.1)
    torch.testing.assert_close(out.loss, torch.full((2,), math.log(2)))
    assert out.chosen_rewards.abs().max() == 0 and out.rejected_rewards.abs().max() == 0 and out.accuracies.sum() == 0


def test_the_gradient_raises_the_chosen_and_lowers_the_rejected_log_probability():
    chosen, rejected = PW.clone().requires_grad_(True), PL.clone().requires_grad_(True)
    preference_loss(chosen, rejected, RW, RL, beta=0.1).loss.sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    # DPO's gradient weight (eq. 8): beta * sigmoid(-beta h), the same size on both
    weights = 0.1 * torch.sigmoid(-0.1 * torch.tensor([by_hand_h(0), by_hand_h(1)]))
    torch.testing.assert_close(-chosen.grad, weights)
    torch.testing.assert_close(rejected.grad, weights)


def test_an_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="known: sigmoid, ipo, hinge"):
        preference_loss(PW, PL, RW, RL, 0.1, "kto")
