"""`echo-vllm --help`: every option of every command says what it does and its default."""

import argparse

import pytest

from echo_vllm.cli import build_parser


def subcommand(name: str) -> argparse.ArgumentParser:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


@pytest.mark.parametrize("name", ["train-draft", "calibrate", "bench", "soak"])
def test_every_option_has_help_and_shows_its_default(name):
    parser = subcommand(name)
    assert [a.option_strings for a in parser._actions if not a.help] == []
    text = parser.format_help()
    for action in parser._actions:
        if action.default not in (None, False, argparse.SUPPRESS):
            assert f"(default: {action.default})" in " ".join(text.split()), action.option_strings


def test_an_option_without_a_default_shows_none():
    assert "(default: None)" not in subcommand("calibrate").format_help()


def test_a_soak_of_fewer_than_ten_requests_is_refused_before_any_server_starts(capsys):
    from echo_vllm.cli import main

    assert main(["soak", "--speculative-config", "{}", "--requests", "9"]) == 1
    assert "--requests must be at least 10" in capsys.readouterr().err
