"""The project's exceptions and exit codes: every error a user can cause derives from `InputError` (exit code 2).

Commands report an `AutoIFError` as one line, `autoif <command>: error: <message>`, with no traceback (`--debug`
shows it). `InputError` renders its location the same way everywhere: `FILE:LINE: field 'x': message`, where LINE is
the real line number in the file (for parquet files and hub datasets, which have no lines, it is the row number).
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from autoif_train.core.process_group import release_process_group

EXIT_OK = 0
EXIT_FAILURE = 1  # the run itself failed (generation, sandbox, a broken environment)
EXIT_BAD_INPUT = 2  # the user's input is wrong: a file, a row, a recipe key, a flag value
EXIT_INTERRUPTED = 130  # Ctrl-C


class AutoIFError(Exception):
    """Base of every error the project raises on purpose; its message is meant for the user, as one line."""

    exit_code = EXIT_FAILURE


class InputError(AutoIFError, ValueError):
    """Bad input: a missing or malformed file, row, field, recipe key or value.

    `InputError(path, line, field, message)` renders as `path:line: field 'field': message`; the parts left as None
    are omitted, and `InputError("message")` alone is a message without a location.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        line: int | None = None,
        field: str | None = None,
        message: str | None = None,
    ):
        if message is None and line is None and field is None:
            path, message = None, "" if path is None else str(path)
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.message = message or ""
        super().__init__(self.render())

    def render(self) -> str:
        where = self.path or ""
        if self.line is not None:
            where = f"{where}:{self.line}" if where else f"line {self.line}"
        text = f"field {self.field!r}: {self.message}" if self.field else self.message
        return f"{where}: {text}" if where else text

    def __str__(self) -> str:
        return self.render()


class RecipeError(InputError):
    """A recipe (YAML file or command-line flag) is wrong: an unknown key, a value of the wrong type or range."""


class ModelNotFoundError(InputError):
    """A local model folder given as `model_name_or_path` (or `--model`) does not exist."""


def exit_code_of(err: BaseException) -> int | None:
    """The exit code for an error the project reports as one line, or None for a bug (shown as a traceback).

    `AutoIFError`s, and classes of this package that set an `exit_code` (the sandbox's `IsolationUnavailable`,
    which is loaded without this package inside the sandbox), are reported."""
    if isinstance(err, AutoIFError):
        return err.exit_code
    code = getattr(type(err), "exit_code", None)
    return code if isinstance(code, int) and type(err).__module__.startswith("autoif_train.") else None


def run_command(prog: str, main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)` the way every `autoif` command runs: a reported error is one line on stderr,
    `PROG: error: MESSAGE`, and its exit code (2 for bad input); Ctrl-C prints "interrupted; rerun the same command
    to resume" and exits 130. `--debug` (or AUTOIF_DEBUG=1) also prints the traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("AUTOIF_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    try:
        code = int(main(argv) or 0)
        release_process_group()
        return code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\n{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        release_process_group(after_error=True)
        return EXIT_INTERRUPTED
    except Exception as err:  # noqa: BLE001 - anything not reported on purpose is re-raised as a bug
        code = exit_code_of(err)
        if code is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)  # one line, whatever the message
        release_process_group(after_error=True)
        return code
