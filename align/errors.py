"""User errors: what every ``align`` subcommand prints as one line instead of a traceback.

``UsageError`` (exit 2) is a bad flag, config value, path or column; ``RunError`` (exit 1) is a failure
found while running (an endpoint that stops answering). ``main_guard`` turns them, and the plain
``ValueError`` / ``FileNotFoundError`` our checks raise, into ``align <cmd>: <message>``; set
``ALIGN_DEBUG=1`` (or pass ``--debug``) to see the traceback instead.
"""

from __future__ import annotations

import os
import sys


class UsageError(ValueError):
    """Something the user gave is wrong (exit 2)."""


class RunError(RuntimeError):
    """Something failed while running (exit 1)."""


def looks_local(name_or_path: str) -> bool:
    """True for what can only be a local path (a hub id is ``name`` or ``org/name``)."""
    return (
        name_or_path.startswith(("/", ".", "~"))
        or name_or_path.count("/") > 1
        or os.path.exists(name_or_path)
    )


def check_model_path(name_or_path: str, flag: str) -> None:
    """A local model folder that does not exist is reported before anything loads."""
    if looks_local(name_or_path) and not os.path.isdir(os.path.expanduser(name_or_path)):
        what = "is not a folder" if os.path.exists(name_or_path) else "does not exist"
        raise UsageError(
            f"{flag} {name_or_path} {what}; give a local checkpoint folder or a hub id (org/name)."
        )


def main_guard(prog: str, run, debug: bool = False) -> int:
    """Run ``run()``; user errors become one line on stderr and exit status 2 (usage) or 1 (runtime)."""
    debug = debug or os.environ.get("ALIGN_DEBUG", "") not in ("", "0")
    try:
        return run()
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{prog}: interrupted.", file=sys.stderr)
        return 130
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
        if debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        if debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
