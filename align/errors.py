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


def check_model_path(
    name_or_path: str, flag: str, adapter_flag: str | None = None, adapter: bool = False
) -> None:
    """A local model folder that does not exist, or that holds a LoRA adapter where a model belongs, is
    reported before anything loads (``adapter_flag``: the command's flag for an adapter on top of a base, if
    any; ``adapter``: the folder is meant to hold one)."""
    path = os.path.expanduser(name_or_path)
    if looks_local(name_or_path) and not os.path.isdir(path):
        what = "is not a folder" if os.path.exists(name_or_path) else "does not exist"
        raise UsageError(
            f"{flag} {name_or_path} {what}; give a local checkpoint folder or a hub id (org/name)."
        )
    adapter_file = os.path.join(path, "adapter_config.json")
    if not adapter and os.path.isfile(adapter_file) and not os.path.isfile(os.path.join(path, "config.json")):
        import json

        try:
            with open(adapter_file, encoding="utf-8") as f:
                base = json.load(f).get("base_model_name_or_path") or "BASE"
        except (OSError, ValueError, AttributeError):
            base = "BASE"
        merge = f"align export --model {base} --adapter {name_or_path} --output MERGED"
        fix = (
            f"give {flag} {base} {adapter_flag} {name_or_path}, or merge them first ({merge})"
            if adapter_flag
            else f"merge it into its base first ({merge}) and give {flag} MERGED"
        )
        raise UsageError(
            f"{flag} {name_or_path} holds a LoRA adapter (adapter_config.json), not a model; {fix}."
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
        if (
            "LOCAL_RANK" not in os.environ or os.environ.get("RANK", "0") == "0"
        ):  # a launch's ranks: say it once
            print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except RunError as exc:
        if debug:
            raise
        print(f"{prog}: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", 1)
