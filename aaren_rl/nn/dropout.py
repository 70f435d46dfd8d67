"""Dropout whose mask costs less on the CPU; ``torch.nn.Dropout`` is its reference.

On the CPU, ``torch.nn.functional.dropout`` draws one Bernoulli sample per element from the
Mersenne Twister, which made dropout about a fifth of a Decision Aaren or Decision Transformer
training step on one core (width 128, 3 layers: ten dropouts over ``[batch, tokens, 128]`` and
``[batch, tokens, 512]`` activations). :class:`Dropout` takes 16 random bits per element from
48-bit words instead (three elements per 64-bit draw) and keeps an element when its bits clear
a threshold: the keep probability is ``1 - p`` rounded to a multiple of ``1 / 65536``, and the
kept elements are scaled by the inverse of that probability, so the output's expectation is
exactly the input, as with ``torch.nn.Dropout``. The draws come from torch's default generator,
so ``torch.manual_seed`` and a checkpoint's RNG state fix the masks as they do for
``nn.Dropout``. On other devices (CUDA's Bernoulli sampler is fast) it calls
``torch.nn.functional.dropout``.

It is opt-in: :func:`use_fast_dropout` swaps a model's ``nn.Dropout`` modules for it (the
decision agents' ``train.fast_dropout: true``). Different masks mean a different training run
from the same seed, so presets whose published numbers were made with ``nn.Dropout`` keep it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["Dropout", "dropout_mask", "use_fast_dropout"]

_LEVELS = 1 << 16  # 16 random bits per element


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> Tensor:
    """The scaled keep mask of a CPU dropout: ``[*shape]``, 0 where dropped, ``1 / keep``
    where kept, with ``keep = 1 - round(p * 65536) / 65536``."""
    dropped_levels = round(p * _LEVELS)
    n = 1
    for size in shape:
        n *= int(size)
    words = torch.empty((n + 2) // 3, dtype=torch.int64).random_(0, 1 << 48)
    # each 48-bit word holds three uniform 16-bit fields (its top 16 bits are zero)
    bits = words.view(torch.int16).view(-1, 4)[:, :3].reshape(-1)[:n].view(shape)
    keep = bits >= dropped_levels - _LEVELS // 2  # int16 runs from -32768
    return keep.to(dtype).mul_(_LEVELS / (_LEVELS - dropped_levels))


class Dropout(nn.Module):
    """``torch.nn.Dropout(p)`` with a cheaper mask on the CPU (see the module docstring).

    ``x [...]`` -> ``[...]``: in training, each element is zeroed with probability ``p`` and
    the others are scaled so that the expectation is ``x``; in eval mode, ``x`` itself.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or round(self.p * _LEVELS) == 0:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, training=True)
        return x * dropout_mask(x.shape, self.p, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(model: nn.Module) -> int:
    """Replace every ``torch.nn.Dropout`` inside ``model`` (in place) by :class:`Dropout` with
    the same ``p``; returns how many were replaced. Dropout holds no weights, so checkpoints
    load either way."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p))
                replaced += 1
    return replaced
