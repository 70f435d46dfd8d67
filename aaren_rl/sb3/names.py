"""sb3-contrib's RecurrentPPO names and their AarenPPO equivalents, for clear errors.

A user coming from ``RecurrentPPO`` writes ``"MlpLstmPolicy"`` or ``lstm_hidden_size=64``;
AarenPPO answers with the name it uses instead rather than SB3's bare "unknown policy" or
Python's "unexpected keyword argument".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# RecurrentPPO's policy names -> AarenPPO's
POLICY_EQUIVALENTS = {
    "MlpLstmPolicy": "MlpAarenPolicy",
    "CnnLstmPolicy": "CnnAarenPolicy",
    "MultiInputLstmPolicy": "MultiInputAarenPolicy",
}

# RecurrentPPO's LSTM policy keywords -> what to write for AarenPPO
LSTM_KEYWORD_EQUIVALENTS = {
    "lstm_hidden_size": "d_model=N (the memory's width)",
    "n_lstm_layers": "n_layers=N",
    "enable_critic_lstm": (
        'critic="separate" for True (the critic has its own memory) or critic="none" for '
        "False (the critic is an MLP on the features)"
    ),
    "shared_lstm": 'critic="shared" (the critic reads the actor\'s memory, detached)',
    "lstm_kwargs": "dropout=p for lstm_kwargs=dict(dropout=p) (the memory's other sizes: "
    "n_heads, d_ff, chunk_size)",
}


def unknown_policy_message(name: str, known: Iterable[str], algo: str = "AarenPPO") -> str:
    """The error for a policy name ``algo`` does not know: the equivalent of a RecurrentPPO
    name, or the names it knows."""
    known = list(known)
    if name in POLICY_EQUIVALENTS:
        return (
            f"{algo} has no {name!r} (RecurrentPPO's LSTM policy): use "
            f"{POLICY_EQUIVALENTS[name]!r}; known policies: {', '.join(known)}"
        )
    return f"policy {name!r} is unknown to {algo}; known policies: {', '.join(known)}"


def check_no_lstm_keywords(kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the AarenPPO keyword for every RecurrentPPO LSTM keyword in
    ``kwargs`` (policy keywords); ``TypeError`` for any other keyword left over."""
    lstm = [k for k in kwargs if k in LSTM_KEYWORD_EQUIVALENTS]
    if lstm:
        fixes = "; ".join(f"{k} -> {LSTM_KEYWORD_EQUIVALENTS[k]}" for k in lstm)
        raise ValueError(
            f"policy_kwargs has RecurrentPPO's LSTM keyword(s) {', '.join(lstm)}; "
            f"AarenPPO's memory is an Aaren: {fixes}"
        )
    if kwargs:
        raise TypeError(f"unexpected policy keyword(s): {', '.join(sorted(kwargs))}")
