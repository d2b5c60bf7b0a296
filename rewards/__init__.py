"""Reward functions: ``f(prompts, completions, **columns) -> list[float | None]`` (TRL's convention).

``rewards.get(spec)`` returns a callable for a built-in name (see ``BUILTINS``), a
``package.module:function`` or a ``path/to/file.py:function``. Completions are strings or chat-message
lists; ``None`` means "not applicable" and is skipped in the weighted sum. Rewards never see tensors.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable

from rewards.code import code_execution
from rewards.format import (
    answer_tag_format,
    length_penalty,
    python_block_format,
    reasoning_answer_format,
    think_answer_format,
)
from rewards.loops import loop_penalty, repetition_penalty
from rewards.math import math_accuracy
from rewards.puzzles import countdown, sudoku

RewardFn = Callable[..., list]

BUILTINS: dict[str, RewardFn] = {
    "math_accuracy": math_accuracy,
    "code_execution": code_execution,
    "think_answer_format": think_answer_format,
    "answer_tag_format": answer_tag_format,
    "reasoning_answer_format": reasoning_answer_format,
    "python_block_format": python_block_format,
    "length_penalty": length_penalty,
    "countdown": countdown,
    "sudoku": sudoku,
    "repetition_penalty": repetition_penalty,
    "loop_penalty": loop_penalty,
}


def _from_file(path: str, name: str) -> RewardFn:
    if not os.path.isfile(path):
        raise ValueError(f"reward spec: file {path!r} does not exist (expected 'path/to/file.py:function').")
    module_name = "align_user_reward_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ValueError(f"reward file {path} line {exc.lineno}: {exc.msg}; fix the file.") from exc
    except Exception as exc:
        raise ValueError(f"reward file {path}: importing it raised {type(exc).__name__}: {exc}.") from exc
    return getattr(module, name, None)


def split_params(spec: str) -> tuple[str, dict]:
    """``name(k=v, ...)`` -> (``name``, {k: v}): a spec's parameters, as Python literals by keyword; a spec
    without parentheses has none."""
    import ast

    target, paren, rest = spec.partition("(")
    if not paren:
        return spec, {}
    if not rest.endswith(")"):
        raise ValueError(f"reward spec {spec!r}: parameters are written name(key=value, ...), closed by ')'.")
    try:
        call = ast.parse(f"f({rest}", mode="eval").body
        if call.args:
            raise ValueError("positional")
        params = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        if None in params:
            raise ValueError("**")
    except (SyntaxError, ValueError):
        raise ValueError(
            f"reward spec {spec!r}: parameters are written name(key=value, ...) with Python literal "
            "values, e.g. repetition_penalty(ngram_size=3, max_penalty=-1.0)."
        ) from None
    return target.strip(), params


def get(spec: str | RewardFn) -> RewardFn:
    """Resolve a reward spec: built-in name, ``package.module:function`` or ``path/to/file.py:function``, each
    optionally with parameters, ``name(key=value, ...)`` (bound as keyword arguments; a function's ``check``
    attribute, when it has one, validates them first)."""
    if callable(spec):
        return spec
    target, params = split_params(spec)
    if params:
        return _with_params(get(target), target, params)
    spec = target
    if spec in BUILTINS:
        return BUILTINS[spec]
    if ":" not in spec:
        raise ValueError(
            f"unknown reward {spec!r}: use a built-in ({', '.join(sorted(BUILTINS))}), 'package.module:function' "
            "or 'path/to/file.py:function'."
        )
    target, name = spec.rsplit(":", 1)
    if target.endswith(".py"):
        fn = _from_file(target, name)
    else:
        if (
            os.getcwd() not in sys.path and "" not in sys.path
        ):  # `align train` runs like `python -m align.train`
            sys.path.insert(0, os.getcwd())
        try:
            fn = getattr(importlib.import_module(target), name, None)
        except ImportError as exc:
            raise ValueError(f"reward spec {spec!r}: cannot import module {target!r} ({exc}).") from exc
        except SyntaxError as exc:
            raise ValueError(
                f"reward module {target} ({exc.filename}) line {exc.lineno}: {exc.msg}; fix the file."
            ) from exc
    if inspect.isclass(fn):
        raise ValueError(
            f"reward spec {spec!r}: {name} is a class, not a function; give a function "
            f"def {name.lower()}(prompts, completions, **kwargs) -> list[float], or module:instance of it."
        )
    if fn is None:
        raise ValueError(f"reward spec {spec!r}: {target!r} has no function {name!r}.")
    if not callable(fn):
        raise ValueError(f"reward spec {spec!r}: {name} is a {type(fn).__name__}, not a function.")
    return fn


# a reward's arguments the trainer passes itself (TRL's), never a spec parameter nor a data column
PASSED_BY_TRAINER = frozenset({"prompts", "completions", "completion_ids", "trainer_state"})


def _with_params(fn: RewardFn, target: str, params: dict) -> RewardFn:
    import functools

    named = {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    unknown = sorted(set(params) - named - PASSED_BY_TRAINER)
    if unknown or set(params) & PASSED_BY_TRAINER:
        bad = unknown or sorted(set(params) & PASSED_BY_TRAINER)
        options = sorted(named - PASSED_BY_TRAINER)
        raise ValueError(
            f"reward {target}: no parameter {', '.join(bad)}; its parameters are {', '.join(options)}."
        )
    check = getattr(fn, "check", None)
    if callable(check):
        check(**params)
    bound = functools.partial(fn, **params)
    functools.update_wrapper(bound, fn)
    return bound


def name_of(spec: str | RewardFn) -> str:
    """Metric name of a reward (``rewards/<name>/mean``; a spec's parameters are not part of it)."""
    if callable(spec):
        return getattr(spec, "__name__", type(spec).__name__)
    return split_params(spec)[0].rsplit(":", 1)[-1]


__all__ = ["BUILTINS", "get", "name_of"]
