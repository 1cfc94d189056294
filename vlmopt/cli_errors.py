"""How the CLI reports what a user can fix: one line naming the item and the fix, exit 2, no traceback.

The errors themselves are ``VlmoptError`` subclasses raised by each layer where the problem is
found; this module only prints them (``user_errors``, the one place they are caught) and checks
the one thing the CLI itself owns: that an ``--output`` file can be written before work starts.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from vlmopt.errors import VlmoptError

err_console = Console(stderr=True)


class OutputFileError(VlmoptError, OSError):
    """A file named with --output cannot be written; refused before any model work."""


def user_errors(fn):
    """Turn the errors a user can act on into a one-line message and their exit code (2; Ctrl-C 130)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]: results written so far are kept in the run directory.")
            raise typer.Exit(130) from None
        except Exception as exc:
            if not _is_user_error(exc):
                raise
            _print_user_error(exc)
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None

    return wrapper


def _is_user_error(exc: Exception) -> bool:
    """Ours (``VlmoptError``), or DSPy's unreachable / timed-out server (DSPy names host and port)."""
    if isinstance(exc, VlmoptError):
        return True
    import dspy

    return isinstance(exc, (dspy.LMTransportError, dspy.LMTimeoutError))


def _print_user_error(exc: Exception) -> None:
    """One line (soft-wrapped: a terminal folds it, a log keeps it whole), then the error's hint if any.

    The message is escaped: ``pip install 'vlmopt[vllm]'`` must not read as rich markup.
    """
    prefix = getattr(exc, "prefix", "error")
    style = "bold red" if prefix == "error" else "bold yellow"
    err_console.print(f"[{style}]{prefix}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    hint = getattr(exc, "hint", None)
    if hint:
        err_console.print(hint, highlight=False, markup=False, soft_wrap=True)


def check_output_file(path: Path, *, folder_ok: bool = False) -> None:
    """Refuse an --output file that cannot be written, before any work (so a run is not lost at its end).

    ``folder_ok``: the output is a folder itself (predict's Parquet dataset of parts), so an existing one is fine.
    """
    if path.is_dir() and folder_ok:
        if not os.access(path, os.W_OK):
            raise OutputFileError(f"--output {path} is not writable; choose another path")
        return
    if path.is_dir():
        raise OutputFileError(f"--output {path} is a folder; give a file name inside it")
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        raise OutputFileError(f"--output {path}: {existing} is a file, not a folder; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputFileError(f"--output {path}: cannot create its folder ({exc.strerror or exc})") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputFileError(f"--output {path} is not writable; choose another path")
