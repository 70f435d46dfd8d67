"""RecurrentPPO's names get errors that name AarenPPO's equivalent."""

from __future__ import annotations

import pytest

from aaren_rl.sb3 import AarenPPO
from aaren_rl.sb3.maskable import MaskableAarenPPO
from aaren_rl.sb3.names import LSTM_KEYWORD_EQUIVALENTS, POLICY_EQUIVALENTS


@pytest.mark.parametrize("lstm_name", sorted(POLICY_EQUIVALENTS))
def test_lstm_policy_names_point_to_the_aaren_policy(lstm_name):
    with pytest.raises(ValueError) as err:
        AarenPPO(lstm_name, "CartPole-v1")
    message = str(err.value)
    assert f"use {POLICY_EQUIVALENTS[lstm_name]!r}" in message
    assert POLICY_EQUIVALENTS[lstm_name] in AarenPPO.policy_aliases  # the named one exists


@pytest.mark.parametrize("algo", [AarenPPO, MaskableAarenPPO])
def test_an_unknown_policy_lists_the_known_ones(algo):
    with pytest.raises(ValueError) as err:
        algo("MlpPolicy", "CartPole-v1")
    message = str(err.value)
    assert "'MlpPolicy' is unknown" in message and algo.__name__ in message
    for known in ("MlpAarenPolicy", "CnnAarenPolicy", "MultiInputAarenPolicy"):
        assert known in message


@pytest.mark.parametrize(
    "keyword, value, equivalent",
    [
        ("lstm_hidden_size", 64, "d_model="),
        ("n_lstm_layers", 2, "n_layers="),
        ("enable_critic_lstm", True, 'critic="separate"'),
        ("shared_lstm", True, 'critic="shared"'),
        ("lstm_kwargs", dict(dropout=0.1), "dropout=p"),
    ],
)
def test_lstm_keywords_name_their_equivalent(keyword, value, equivalent):
    assert set(LSTM_KEYWORD_EQUIVALENTS) == {
        "lstm_hidden_size", "n_lstm_layers", "enable_critic_lstm", "shared_lstm", "lstm_kwargs"
    }  # fmt: skip
    with pytest.raises(ValueError) as err:
        AarenPPO("MlpAarenPolicy", "CartPole-v1", policy_kwargs={keyword: value})
    assert keyword in str(err.value) and equivalent in str(err.value)


def test_other_unknown_policy_keywords_stay_type_errors():
    with pytest.raises(TypeError, match="unexpected policy keyword.*not_a_keyword"):
        AarenPPO("MlpAarenPolicy", "CartPole-v1", policy_kwargs=dict(not_a_keyword=1))
