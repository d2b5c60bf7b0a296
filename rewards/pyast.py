"""``ast.parse`` behind one lock, for code that parses from worker threads (the code rewards score a batch in
a thread pool). CPython 3.11's AST constructor keeps its recursion-depth counter in state that every thread
shares, so two threads parsing at once can fail with ``SystemError: AST constructor recursion depth
mismatch`` (python/cpython#106905; seen here in 1 of 3 runs of tests/test_eval.py)."""

from __future__ import annotations

import ast
import threading

_LOCK = threading.Lock()


def parse(source: str, *args, **kwargs) -> ast.AST:
    with _LOCK:
        return ast.parse(source, *args, **kwargs)
