"""User errors: one message on stderr and exit code 2; the traceback only on request.

Anything a user can fix (a flag, a path, a data line, a task name, a gin typo) is raised as
`UsageError` (or a subclass) whose message names the file, line, field or parameter and says
what to do. Every entry point's `main(argv) -> int` is wrapped by `command("fiat-t5x NAME")`,
which prints `fiat-t5x NAME: error: <message>` and returns 2. `--debug` anywhere on the command
line (before a bare `--`) or FIAT_T5X_DEBUG=1 prints the traceback first. Any other exception
is a bug and keeps its traceback (exit 1).

Commands validate everything before they write anything, so a run that fails with a usage
error leaves no files behind.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType

DEBUG_FLAG = "--debug"
DEBUG_ENV = "FIAT_T5X_DEBUG"

# OS errors about a path the user gave: their message (with the path) is enough.
_PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
# (program name, debug) of the outermost `command`: `fiat-t5x train` wraps the main of
# `python -m fiat_t5x.train`, and the name and --debug the user typed are the outer ones.
_OUTER: contextvars.ContextVar[tuple[str, bool] | None] = contextvars.ContextVar(
    "fiat_t5x_command", default=None
)
# gin appends the configurable it was calling to every exception raised inside it.
_GIN_CONTEXT = "\n  In call to configurable "


class UsageError(ValueError):
    """A problem the user can fix; the message says what is wrong, where, and what to do."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (closest: a, b)' for the candidates most like `name`, or '' when none is close."""
    matches = difflib.get_close_matches(name, sorted(set(candidates)), n=n, cutoff=0.6)
    return f" (closest: {', '.join(matches)})" if matches else ""


def import_module(name: str, flag: str = "--module") -> ModuleType:
    """Import a module the user named; a missing module is a UsageError saying how to fix it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
            raise UsageError(
                f"{flag} {name}: no module named {e.name!r}. Check the spelling, and that the "
                "directory holding it is importable (run from it, or set PYTHONPATH=DIR)"
            ) from e
        raise UsageError(f"{flag} {name}: importing it failed: {e}") from e


def user_message(error: BaseException) -> str | None:
    """The message to show for a user error, or None for anything else (a bug)."""
    if isinstance(error, UsageError):
        return str(error).split(_GIN_CONTEXT)[0]
    if isinstance(error, ModuleNotFoundError):  # a task module or a package not installed
        return (
            f"{str(error).split(_GIN_CONTEXT)[0]}: install it, or run from the directory that "
            "holds it (or set PYTHONPATH=that directory)"
        )
    if isinstance(error, _PATH_ERRORS):
        if error.filename and error.strerror:
            return f"{error.filename}: {error.strerror}"
        return str(error).split(_GIN_CONTEXT)[0]
    return None


def debug_requested(argv: Sequence[str]) -> tuple[list[str], bool]:
    """argv without `--debug` (before a bare `--`), and whether tracebacks were asked for."""
    argv = list(argv)
    end = argv.index("--") if "--" in argv else len(argv)
    flagged = DEBUG_FLAG in argv[:end]
    if flagged:
        argv = [a for a in argv[:end] if a != DEBUG_FLAG] + argv[end:]
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return argv, flagged or env


Main = Callable[[Sequence[str]], int]


def command(prog: str) -> Callable[[Callable[..., int | None]], Main]:
    """Decorate `main(argv) -> int` so user errors become one message and exit code 2."""

    def decorate(main: Callable[..., int | None]) -> Main:
        @functools.wraps(main)
        def guarded(argv: Sequence[str] | None = None) -> int:
            args, debug = debug_requested(sys.argv[1:] if argv is None else argv)
            shown, outer_debug = _OUTER.get() or (prog, False)
            debug = debug or outer_debug
            token = _OUTER.set((shown, debug))
            try:
                return int(main(args) or 0)
            except BrokenPipeError:  # `fiat-t5x ... | head`: the reader left; not an error
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 141
            except Exception as e:
                message = user_message(e)
                if message is None:
                    raise
                if debug:
                    traceback.print_exc()
                print(f"{shown}: error: {message}", file=sys.stderr)
                return 2
            finally:
                _OUTER.reset(token)

        guarded.guarded_prog = prog  # type: ignore[attr-defined]
        return guarded

    return decorate
