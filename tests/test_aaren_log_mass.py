"""The log mass of an Aaren head against a hand reference: the log-sum-exp of the scores a
token sees (its segment, its real tokens, the carried state), in all three forms."""

from __future__ import annotations

import math

import pytest
import torch

from aaren_rl.nn.aaren import AarenAttention, AarenBackbone
from aaren_rl.nn.aaren_attention import (
    AarenState,
    aaren_reference,
    aaren_scan,
    aaren_step,
    initial_aaren_state,
    log_mass,
)


def _hand_log_mass(scores, resets, mask, carry_logit):
    """``log sum exp`` over the visible tokens, by loops: scores ``[B,T,H]``."""
    b, t, h = scores.shape
    out = torch.full((b, t, h), float("-inf"), dtype=scores.dtype)
    for row in range(b):
        for head in range(h):
            seen = [carry_logit[row, head].item()]
            for i in range(t):
                if resets[row, i]:
                    seen = []
                if mask[row, i]:
                    seen.append(scores[row, i, head].item())
                finite = [x for x in seen if x != float("-inf")]
                if finite:
                    top = max(finite)
                    out[row, i, head] = top + math.log(sum(math.exp(x - top) for x in finite))
    return out


@pytest.mark.parametrize("chunk", [4, 64])
def test_scan_and_reference_log_mass_equal_the_hand_log_sum_exp(chunk):
    g = torch.Generator().manual_seed(0)
    b, t, h, d = 3, 23, 2, 4
    scores = 3 * torch.randn(b, t, h, generator=g, dtype=torch.double)
    values = torch.randn(b, t, h, d, generator=g, dtype=torch.double)
    resets = torch.zeros(b, t, dtype=torch.bool)
    resets[0, 7] = resets[0, 15] = resets[2, 0] = True
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 18:] = False
    carried = AarenState(
        torch.randn(b, h, generator=g, dtype=torch.double),
        torch.rand(b, h, generator=g, dtype=torch.double) + 0.5,
        torch.randn(b, h, d, generator=g, dtype=torch.double),
    )
    hand = _hand_log_mass(scores, resets, mask, log_mass(carried))
    _, _, scan = aaren_scan(scores, values, carried, resets, mask, chunk, return_log_mass=True)
    _, _, ref = aaren_reference(scores, values, carried, resets, mask, return_log_mass=True)
    torch.testing.assert_close(scan[mask], hand[mask])
    torch.testing.assert_close(ref[mask], hand[mask])
    # the step: the same numbers token by token
    state = carried
    for i in range(t):
        _, state = aaren_step(scores[:, i], values[:, i], state, reset=resets[:, i])
        rows = mask[:, i]
        if rows.all():
            torch.testing.assert_close(log_mass(state), hand[:, i])


def test_log_mass_of_equal_scores_is_the_log_count():
    t = 40
    scores = torch.zeros(1, t, 1, dtype=torch.double)
    values = torch.randn(1, t, 1, 2, dtype=torch.double)
    _, _, mass = aaren_scan(scores, values, chunk_size=8, return_log_mass=True)
    torch.testing.assert_close(mass[0, :, 0].exp(), torch.arange(1, t + 1, dtype=torch.double))


def test_empty_and_poisoned_memories():
    empty = initial_aaren_state(2, 3, 4)
    assert torch.isneginf(log_mass(empty)).all()
    scores = torch.tensor([[[0.0], [float("nan")], [1.0]]])
    values = torch.ones(1, 3, 1, 2)
    _, _, mass = aaren_scan(scores, values, chunk_size=2, return_log_mass=True)
    assert torch.isfinite(mass[0, 0]).all() and torch.isnan(mass[0, 1:]).all()


@pytest.mark.parametrize("decay", [False, True])
def test_layer_with_log_mass_agrees_in_scan_reference_and_step(decay):
    torch.manual_seed(0)
    backbone = AarenBackbone(16, 2, 4, decay=decay, log_mass=True).double()
    x = torch.randn(3, 70, 16, dtype=torch.double)
    resets = torch.zeros(3, 70, dtype=torch.bool)
    resets[0, 30] = True
    y_scan, final = backbone(x, resets=resets)
    y_ref, _ = backbone(x, resets=resets, method="reference")
    torch.testing.assert_close(y_scan, y_ref)
    state, steps = backbone.initial_state(3, dtype=torch.double), []
    for i in range(70):
        state = backbone.reset_state(state, resets[:, i])
        y, state = backbone.step(x[:, i], state)
        steps.append(y)
    torch.testing.assert_close(torch.stack(steps, 1), y_scan)
    # a sequence split in two, the state carried across, is the same as one pass
    first, carried = backbone(x[:, :33], resets=resets[:, :33])
    second, _ = backbone(x[:, 33:], carried, resets=resets[:, 33:])
    torch.testing.assert_close(torch.cat([first, second], 1), y_scan)


def test_log_mass_gradients_are_finite_with_padding():
    torch.manual_seed(1)
    attn = AarenAttention(8, 2, chunk_size=4, decay=True, log_mass=True)
    x = torch.randn(2, 9, 8, requires_grad=True)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 5:] = False
    y, _ = attn(x, mask=mask)
    (y * mask[..., None]).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())
    assert attn.out_proj.in_features == 8 + 2
