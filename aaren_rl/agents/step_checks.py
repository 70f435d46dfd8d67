"""The model boundary of a rollout: a NaN or inf never enters a policy step silently.

Inside the attention a non-finite input poisons the memory (its outputs turn NaN until the
episode ends), so a NaN observation in step 200 of a rollout would surface, if at all, as a
NaN return many steps later. :func:`check_step_inputs` stops it at the door instead and names
the environment (the batch row) and its timestep. ``DecisionModel.act`` and
``observe_action`` call it; a fast inference step built beside them calls the same function, so
every step path refuses the same inputs with the same message.

The check costs one ``isfinite`` per input (numpy's on the CPU, about 1 µs; on a GPU one host
sync for all the inputs together); the details (which env, which entry) are worked out only
when something is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)

__all__ = ["NonFiniteInputError", "check_step_inputs", "FIXES"]

FIXES = {
    "observation": "the environment returned it; check the environment (or wrap it to "
    "replace such values) before rolling out",
    "return_to_go": "it is the target return minus the rewards of the episode so far, so the "
    "target or an earlier reward was NaN or inf; check the target and the environment's rewards",
    "action": "the action fed back must be finite; a NaN action means the policy's weights or "
    "inputs are broken (check the checkpoint)",
    "reward": "the environment returned it; check the environment's reward",
}


class NonFiniteInputError(ValueError):
    """A NaN or inf reached a policy step. ``env_index`` is the batch row, ``step`` its timestep."""

    def __init__(self, message: str, *, name: str, env_index: int, step: int | None) -> None:
        super().__init__(message)
        self.name, self.env_index, self.step = name, env_index, step


def _describe(name: str, values: torch.Tensor, timestep: Any) -> NonFiniteInputError:
    """The error for the first non-finite row of ``values`` (``[batch]`` or ``[batch, dim]``)."""
    flat = values.reshape(values.shape[0], -1) if values.dim() else values.reshape(1, 1)
    bad = ~torch.isfinite(flat)
    rows = torch.nonzero(bad.any(dim=1)).flatten().tolist()
    row = rows[0]
    entry = int(torch.nonzero(bad[row]).flatten()[0])
    step = None
    if timestep is not None:
        t = torch.as_tensor(timestep).reshape(-1)
        step = int(t[row]) if t.numel() > row else int(t[0])
    at = f" at step {step}" if step is not None else ""
    where = f" (entry {entry})" if values.dim() > 1 else ""
    others = f"; {len(rows)} envs are affected: {rows[:10]}" if len(rows) > 1 else ""
    message = f"{name} of env {row}{at} is {float(flat[row, entry])}{where}{others}. "
    return NonFiniteInputError(message + f"Fix: {FIXES[name]}", name=name, env_index=row, step=step)


def check_step_inputs(
    timestep: Any = None,
    *,
    observation: Any = None,
    return_to_go: Any = None,
    action: Any = None,
    reward: Any = None,
) -> None:
    """Raise :class:`NonFiniteInputError` if any given input of a policy step is NaN or inf.

    Args:
        timestep: ``[batch]`` each row's timestep in its episode (named in the message), or None.
        observation: ``[batch, obs_dim]``; return_to_go: ``[batch]``; action:
            ``[batch, act_dim]``; reward: ``[batch]``. Tensors or arrays; None skips that input.

    The message reads ``observation of env 3 at step 17 is nan (entry 2). Fix: ...``, naming the
    first bad row (and how many rows are bad).
    """
    given = [
        (name, torch.as_tensor(x).detach())  # a checked value: never part of a graph
        for name, x in (
            ("observation", observation),
            ("return_to_go", return_to_go),
            ("action", action),
            ("reward", reward),
        )
        if x is not None
    ]
    given = [(name, x) for name, x in given if x.is_floating_point() or x.is_complex()]
    if not given:
        return
    if all(x.device.type == "cpu" and x.dtype in _NUMPY_FLOATS for _, x in given):
        # on the CPU numpy's test is several times cheaper than torch's for small inputs
        finite = [bool(np.isfinite(x.numpy()).all()) for _, x in given]
        ok = all(finite)
    else:  # one host sync for all the inputs together
        finite = [torch.isfinite(x).all() for _, x in given]
        ok = finite[0]
        for f in finite[1:]:
            ok = ok & f
    if bool(ok):
        return
    for (name, x), f in zip(given, finite, strict=True):
        if not bool(f):
            raise _describe(name, x, timestep)
