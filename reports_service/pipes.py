"""Commands whose output is cut by a pipe (``reports-service token list | head``) stop quietly."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import ParamSpec

P = ParamSpec("P")

CUT = 141
"""The exit status of a command whose output was cut: 128 + SIGPIPE, as a shell shows for
``seq 1000000 | head -1`` (``set -o pipefail`` sees it the same way)."""


def quiet_when_cut(main: Callable[P, int]) -> Callable[P, int]:
    """``main``, exiting with :data:`CUT` and no traceback when its reader closes stdout."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            try:
                return main(*args, **kwargs)
            finally:
                sys.stdout.flush()  # NOTE: what is still buffered fails here, not at exit
        except BrokenPipeError:
            # NOTE: Python's recipe (the signal module's note on SIGPIPE): stdout goes to
            #   devnull, so that the interpreter's own flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return CUT

    return run
