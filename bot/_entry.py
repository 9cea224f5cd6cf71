"""The ``penny`` command's entry point: importing the CLI takes about a second, and a Ctrl-C in that
second should end the command as quietly as one later on (exit 130), not with a traceback."""

from __future__ import annotations

__all__ = ["main"]


def main() -> int:
    try:
        from bot.cli import main as run
    except KeyboardInterrupt:
        return 130
    return run()
