"""The terminal: rich consoles wide enough for the tables when output goes to a file or CI log."""

from __future__ import annotations


def console(stderr: bool = False):
    from rich.console import Console

    probe = Console(stderr=stderr)
    return probe if probe.is_terminal else Console(stderr=stderr, width=200)
