"""The command-line contract: what every command of the toolkit does with its exit status and its two streams.

Every entry point is a ``main(argv: list[str] | None = None) -> int`` around an argparse
parser, decorated with :func:`command` under the name its user types: the console scripts
of ``pyproject.toml`` (``fma-train``, run by the Makefile as ``python -m
experiments.runner``; the parser's ``prog`` is that name too), and ``python -m bench.<x>``.

Exit status and errors
    * **0** the command did what it was asked.
    * **2** a usage error: an unknown or missing argument, a bad value, or an option the
      command would ignore (no command accepts one). argparse prints the usage and
      ``fma-<command>: error: <what>`` on stderr.
    * **1** a :class:`~common.errors.ToolkitError`: something the user can fix (a missing
      file or folder, a bad config, a file that fails a check). Exactly one line,
      ``fma-<command>: error: <message>``, on stderr; the message names the file or field.
    * **130** interrupted (Ctrl-C): one line ``fma-<command>: interrupted`` on stderr
      (followed by how to resume, for the commands that can).
    * Any other exception is a bug: it keeps its traceback (and Python's exit status 1).

Streams
    **Results on stdout**: what the command was run for, so that it can be piped or saved:
    tables, scores, a validation report, the files written, the one-line summary of what
    was done. **Diagnostics on stderr**: progress bars, where inputs were found, notes on
    what was skipped or reused, warnings, errors. A check that fails is an error: ``fma-validate``
    prints its report (every problem, one per line) on stdout, then exits 1 with the
    error line ``fma-validate: error: INVALID: …`` on stderr; ``fma-submit`` and
    ``fma-upload`` do the same with the report of the file they checked.

Pipes
    Output piped into a reader that stops early (``fma-score a.csv b.csv --labels l.csv |
    head -n 1``) ends quietly. When a write to stdout fails with ``EPIPE`` because its reader
    is gone, stdout is pointed at ``/dev/null``, so that Python's last flush at exit cannot
    fail again (the Python documentation's recipe, "Note on SIGPIPE" in :mod:`signal`), and
    the command exits 141 (128 + SIGPIPE), the status a shell shows for a tool killed by
    that signal. A broken pipe elsewhere (a subprocess, a socket) is a bug like any other.
"""

from __future__ import annotations

import functools
import os
import select
import sys
from collections.abc import Callable
from typing import Protocol

from common.errors import ToolkitError


class Main(Protocol):
    """``main(argv=None) -> exit status``: argv None means ``sys.argv[1:]``."""

    def __call__(self, argv: list[str] | None = None) -> int: ...

#: Exit status of a :class:`~common.errors.ToolkitError`.
EXIT_ERROR = 1
#: Exit status of an interrupted command: 128 + SIGINT.
EXIT_INTERRUPTED = 130
#: Exit status when stdout's reader went away: 128 + SIGPIPE.
EXIT_BROKEN_PIPE = 141


def command(name: str, *, resume: str = "") -> Callable[[Main], Main]:
    """Give ``main`` the contract of this module, as the command ``name`` (``"fma-score"``).

    Parameters
    ----------
    name : str
        What the user types: ``fma-score``, ``python -m bench.predict``.
    resume : str
        How to resume after an interruption (``"run it again to resume"``), for the
        commands that keep their finished work; said after ``interrupted``.

    Returns
    -------
    callable
        A decorator; the decorated ``main`` keeps its signature and docstring.
    """

    def decorate(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            return run_command(main, argv, name=name, resume=resume)

        return run

    return decorate


def run_command(main: Main, argv: list[str] | None, *, name: str, resume: str = "") -> int:
    """``main(argv)`` under the contract of this module; its exit status.

    stdout is flushed before returning, so that a reader that went away shows here and
    not as an error at interpreter exit.
    """
    try:
        status = main(argv)
        sys.stdout.flush()
    except ToolkitError as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted" + (f"; {resume}" if resume else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not stdout_reader_gone():
            raise
        silence_stdout()
        return EXIT_BROKEN_PIPE
    return status


def stdout_reader_gone() -> bool:
    """Whether ``sys.stdout`` is a pipe or socket whose reading end is closed (``poll`` reports an error)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without a descriptor, or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def silence_stdout() -> None:
    """Point stdout's descriptor at ``/dev/null``: what is still buffered, or printed later, goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)
