"""The reward functions of a run, and the contract they are called under.

A reward function is named in the recipe (a built-in name, ``path/to/file.py:function`` or
``package.module:function``; ``rewards.get`` resolves it) and is called once per rollout phase as::

    fn(prompts=[...], completions=[...], completion_ids=[[...], ...], trainer_state=TrainerState, **columns)

with one entry per completion (N = prompts x num_generations; each dataset column repeated per
completion, ``completion_ids`` up to the first EOS). It returns N numbers (int, float, bool, or 0-d
numpy / torch numbers), or None for a completion it cannot score (no signal from this function for it;
the weighted sum skips it). Optional attributes: ``warm_up()``, called once before the first rollout
(e.g. ``math_accuracy`` starts its grading workers there); ``last_metrics``, a dict read after each
call and logged as ``rewards/<name>/<key>`` (timeouts, retries).

A call that raises, returns the wrong count, a dict, a NaN or an infinity, or anything but numbers / None
stops the run (before any update) with a ``RewardError`` naming the function and the first failing sample; a call that runs past
``reward_timeout_s`` is stopped by ``align.watchdog``.
"""

from __future__ import annotations

import logging
import math
import numbers

import torch

import rewards as reward_registry
from align.errors import RunError
from align.watchdog import RewardWatchdog

logger = logging.getLogger(__name__)

RESERVED = reward_registry.PASSED_BY_TRAINER  # reward arguments, not columns


def needed_columns(fn) -> list[tuple[str, ...]]:
    """The dataset columns a reward reads, each as a group of which one must exist: what it declares
    (``fn.gold_columns``, for rewards whose columns are optional keywords) plus its parameters that have no
    default and are not the trainer's own arguments."""
    import inspect

    groups = [tuple(g) for g in getattr(fn, "gold_columns", ())]
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return groups
    for p in params:
        if p.name in RESERVED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.default is not p.empty:
            continue
        if (p.name,) not in groups:
            groups.append((p.name,))
    return groups


def check_reward_columns(specs: list, columns: list[str]) -> None:
    """Every reward finds the columns it reads in the data, checked once before any weights load."""
    for spec in specs:
        fn, name = reward_registry.get(spec), reward_registry.name_of(spec)
        for group in needed_columns(fn):
            if not set(group) & set(columns):
                named = " or ".join(repr(c) for c in group)
                raise ValueError(
                    f"reward {name} reads a column named {named}, which the data lacks (it has "
                    f"{columns}); rename one with --rename_columns old:{group[0]}."
                )


class RewardError(RunError):
    """A reward function raised or returned the wrong number of values (the message names it and the sample)."""


class RewardSet:
    """The resolved, weighted reward functions of a run (module docstring). ``score`` gives [N, F]."""

    def __init__(self, specs: list, weights: list[float] | None = None, timeout_s: float = 600.0):
        self.funcs = [reward_registry.get(s) for s in specs]
        self.names = [reward_registry.name_of(s) for s in specs]
        weights = weights or [1.0] * len(self.funcs)
        if len(weights) != len(self.funcs):
            raise ValueError(f"{len(weights)} reward_weights for {len(self.funcs)} reward functions.")
        self.weights = torch.tensor(weights, dtype=torch.float32)
        self.timeout_s = timeout_s
        self._warned_all_none: set[str] = set()

    def warm_up(self) -> None:
        for fn in self.funcs:
            if callable(getattr(fn, "warm_up", None)):
                fn.warm_up()

    def score(
        self, prompts, texts, completion_ids, completion_mask, rows, state, raw_prompts=None
    ) -> tuple[torch.Tensor, dict]:
        """([N, F] rewards per function, NaN where a function returned None; {metric: value} the functions
        published in ``last_metrics``). ``raw_prompts``: the rows' prompts as the data holds them; when they
        are chat messages the functions get them, and each completion as ``[{"role": "assistant", "content":
        text}]``, as TRL gives conversational data to its reward functions."""
        if raw_prompts and isinstance(raw_prompts[0], list):
            prompts, texts = list(raw_prompts), [[{"role": "assistant", "content": t}] for t in texts]
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in RESERVED}
        ids = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask)]
        out = torch.full((len(texts), len(self.funcs)), float("nan"))
        metrics = {}
        for j, (fn, name) in enumerate(zip(self.funcs, self.names)):
            with RewardWatchdog(fn, name, prompts, texts, ids, columns, state, self.timeout_s):
                values = call_reward(fn, name, prompts, texts, ids, columns, state)
            out[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values])
            for key, value in (getattr(fn, "last_metrics", None) or {}).items():  # e.g. grading timeouts
                metrics[f"rewards/{name}/{key}"] = float(value)
            if all(v is None for v in values) and name not in self._warned_all_none:
                self._warned_all_none.add(name)
                logger.warning(
                    "reward function %r returned None for every completion of a batch: it gives this "
                    "batch no signal (check its dataset columns); warning once.",
                    name,
                )
        return out, metrics

    def weighted(self, per_func: torch.Tensor) -> torch.Tensor:
        """[N] the weighted sum over functions, skipping the Nones."""
        return (per_func * self.weights).nansum(dim=1)


def call_reward(fn, name, prompts, texts, ids, columns, state) -> list:
    """Call one reward function; a raise or a wrong-length result names the function and the sample."""
    try:
        values = fn(prompts=prompts, completions=texts, completion_ids=ids, trainer_state=state, **columns)
    except Exception as exc:
        if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
            raise RewardError(
                f"reward function {name!r} raised TypeError: {exc}. The trainer passes prompts, completions, "
                "completion_ids, trainer_state and every dataset column as keyword arguments: add **kwargs to "
                f"its signature, e.g. def {name}(prompts, completions, **kwargs)."
            ) from exc
        culprit = _first_failing(fn, prompts, texts, ids, columns, state)
        where = (
            ""
            if culprit is None
            else f" on sample {culprit} (prompt {prompts[culprit][-200:]!r}, completion {texts[culprit][:200]!r})"
        )
        raise RewardError(f"reward function {name!r} raised {type(exc).__name__}: {exc}{where}") from exc
    if isinstance(values, (dict, str, bytes)):
        what = (
            f"a dict (keys {list(values)[:5]!r})"
            if isinstance(values, dict)
            else f"a {type(values).__name__}"
        )
        raise RewardError(
            f"reward function {name!r} returned {what} for {len(texts)} completions; return a list "
            "with one float (or None) per completion."
        )
    values = list(values) if values is not None else None
    if values is None or len(values) != len(texts):
        got = "None" if values is None else f"{len(values)} values"
        raise RewardError(
            f"reward function {name!r} returned {got} for {len(texts)} completions; return one "
            "float (or None) per completion."
        )
    for i, value in enumerate(values):
        if value is not None and not _is_number(value):
            raise RewardError(
                f"reward function {name!r} returned {type(value).__name__} {value!r:.60} for completion {i}; a reward "
                "is a number (int or float) or None per completion."
            )
        if value is not None and not math.isfinite(
            float(value)
        ):  # NaN is not None: it would vanish in the sum
            raise RewardError(
                f"reward function {name!r} returned {float(value)} for sample {i} (prompt {prompts[i][-200:]!r}, "
                f"completion {texts[i][:200]!r}); stopped before any update. Return a finite number, or None for a "
                "completion the function cannot score."
            )
    return values


def _is_number(value) -> bool:
    """An int / float / bool, or a 0-d numpy / torch number (whose ``item()`` is one); never a string."""
    if isinstance(value, numbers.Real):
        return True
    return getattr(value, "ndim", None) == 0 and isinstance(value.item(), numbers.Real)


def _first_failing(fn, prompts, texts, ids, columns, state) -> int | None:
    for i in range(len(texts)):
        try:
            fn(
                prompts=prompts[i : i + 1],
                completions=texts[i : i + 1],
                completion_ids=ids[i : i + 1],
                trainer_state=state,
                **{k: v[i : i + 1] for k, v in columns.items()},
            )
        except Exception:
            return i
    return None
