"""The CPU dropout against its reference, ``torch.nn.Dropout``: same distribution, same
expectation, same gradient rule, identity in eval mode, seeded by torch's generator."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from aaren_rl.agents.decision_model import build_decision_model
from aaren_rl.nn.dropout import Dropout, dropout_mask, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_scale_match_bernoulli_dropout(p):
    torch.manual_seed(0)
    n = 2_000_000
    y = Dropout(p).train()(torch.ones(n))
    kept = y != 0
    keep = 1.0 - round(p * 65536) / 65536  # the quantised keep probability
    assert abs(keep - (1 - p)) < 1 / 65536
    # 6 standard deviations of a binomial count
    assert abs(kept.double().mean().item() - keep) < 6 * math.sqrt(keep * (1 - keep) / n)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / keep))
    reference = nn.Dropout(p).train()(torch.ones(n))
    # both keep E[y] = x: the means agree within sampling noise
    sd = math.sqrt((1 - keep) / keep / n)
    assert abs(y.double().mean().item() - 1) < 6 * sd
    assert abs(reference.double().mean().item() - 1) < 6 * sd


def test_mask_bits_are_independent_across_positions():
    """Neighbouring elements share a 48-bit word: their drops must still be independent."""
    torch.manual_seed(1)
    drop = (dropout_mask((600_000,), 0.5, torch.float32) == 0).double().view(-1, 3)
    for i, j in ((0, 1), (1, 2), (0, 2)):
        both = (drop[:, i] * drop[:, j]).mean().item()
        assert abs(both - 0.25) < 6 * math.sqrt(0.25 * 0.75 / drop.shape[0])


def test_gradient_is_the_mask_and_eval_is_the_identity():
    torch.manual_seed(2)
    layer = Dropout(0.3)
    x = torch.randn(4, 7, 5, requires_grad=True)
    y = layer(x)
    y.backward(torch.ones_like(y))
    scale = y.detach() / x.detach()
    torch.testing.assert_close(x.grad, scale)  # d y / d x is the scaled mask
    layer.eval()
    assert layer(x) is x
    assert Dropout(0.0).train()(x) is x


def test_masks_follow_torch_manual_seed():
    x = torch.randn(3, 11)
    torch.manual_seed(5)
    a = Dropout(0.2)(x)
    torch.manual_seed(5)
    b = Dropout(0.2)(x)
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, Dropout(0.2)(x))


def test_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)


def test_swap_in_a_model_changes_training_masks_only():
    torch.manual_seed(0)
    config = {"d_model": 16, "n_layers": 2, "n_heads": 1, "dropout": 0.1, "max_timestep": 32}
    model = build_decision_model(config, 3, 2)
    reference = build_decision_model(config, 3, 2)
    reference.load_state_dict(model.state_dict())
    n_dropouts = sum(type(m) is nn.Dropout for m in model.modules())
    assert use_fast_dropout(model) == n_dropouts > 0
    assert not any(type(m) is nn.Dropout for m in model.modules())
    model.eval()
    reference.eval()
    obs, act = torch.randn(2, 6, 3), torch.randn(2, 6, 2)
    rtg, steps = torch.randn(2, 6), torch.arange(6).repeat(2, 1)
    torch.testing.assert_close(model(obs, act, rtg, steps)[0], reference(obs, act, rtg, steps)[0])
