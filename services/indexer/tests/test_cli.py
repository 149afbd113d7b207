"""The indexer's command line (pydantic-settings CliApp): parsing and exit codes, no database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic_settings import CliApp, get_subcommand

from cliprs_indexer.__main__ import DeleteArea, IndexerCli, Rebuild, main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["rebuild"], Rebuild(area=None)),
        (["rebuild", "--area", "3", "--area", "4"], Rebuild(area=[3, 4])),
        (["delete-area", "7"], DeleteArea(area=7)),
    ],
)
def test_subcommands_parse(argv: list[str], expected: object) -> None:
    assert get_subcommand(CliApp.run(IndexerCli, cli_args=argv)) == expected


@pytest.mark.parametrize("argv", [[], ["rebuild", "--area", "x"]])
def test_bad_command_lines_exit_2(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("argv", [["bogus"], ["delete-area"]])
def test_argparse_errors_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_show_without_an_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("CLIPRS_DATA_DIR", str(tmp_path))
    assert main(["show"]) == 0
    assert json.loads(capsys.readouterr().out) == {"version": None}
