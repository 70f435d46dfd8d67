"""The command line's shared pieces: sub-command dispatch and --threads."""

from __future__ import annotations

import argparse

import pytest
import torch

from aaren_rl.cli import COMMANDS, add_threads_argument, apply_threads, build_parser


def test_every_sub_command_has_the_shared_threads_flag():
    for name in COMMANDS:
        parser = build_parser([name])
        (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        action = sub.choices[name]._option_string_actions["--threads"]
        assert action.type("3") == 3, name
        with pytest.raises(argparse.ArgumentTypeError):
            action.type("-1")


def test_threads_flag_rejects_negative_and_zero_keeps_torch_choice(capsys):
    parser = argparse.ArgumentParser()
    add_threads_argument(parser, default=1)
    assert parser.parse_args([]).threads == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "-2"])
    assert "--threads must be >= 0" in capsys.readouterr().err
    before = torch.get_num_threads()
    apply_threads(0)
    assert torch.get_num_threads() == before
    apply_threads(2)
    assert torch.get_num_threads() == 2  # the conftest fixture restores the count
