"""The command line run in this process (fast: no interpreter start-up), as a user would see it."""

from __future__ import annotations

import sys

import pytest

from vditscope.cli import main


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, stderr) of ``vditscope ARGV`` through the entry point that maps errors to one line."""
    code, _, err = run_main_output(argv, capsys, monkeypatch)
    return code, err


def run_main_output(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``vditscope ARGV`` through the entry point."""
    monkeypatch.setattr(sys, "argv", ["vditscope", *argv])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
