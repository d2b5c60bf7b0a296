"""The GRPO trainer's objectives, one registered entry per ``loss_type`` (torch-free until a loss runs).

An objective says what it needs from the trainer and computes its loss with one signature::

    loss, metrics = objective.loss(estimate, batch, args, accumulation)

``estimate`` is the policy's estimate under the micro-batch's plan, reduced as ``reduce`` asks: ``tokens``
(per-token values [n, L], ``align.logprob.combine``), ``samples`` (per-sample sequence sums [n, K]) or
``passes`` (the raw per-pass values [P, n, L], for objectives that build their own bounds, EUBO included);
``batch`` is the ``align.rollout.MicroBatch``; ``accumulation`` the gradient-accumulation count of this
optimizer step. The trainer divides the loss by ``accumulation`` unless the objective ``scales_itself``.

Declared besides: ``divisor`` (the per-process count of one generation batch the buffer carries:
completion ``tokens``, ``passes`` with a target, or ``rows`` with a nonzero advantage), ``group_weights``
(a rollout-time transform of the grouped advantages, wd1's), ``value_free`` (on-policy without KL its
gradient does not depend on the estimate's value, so ``mc_backward: chunked`` skips the no-grad estimate),
``scores_canvas`` (the EOS padding is scored too), ``full_vocab`` (the replayed softmax keeps the mask
token), ``kl`` (``reference``: beta may be > 0; ``none``: beta must be 0), ``estimators`` (the only ones it
runs with, ``estimator_note`` says why; ``exclusive``: that estimator runs with this objective only) and
``check`` (its own config checks, one-line ValueErrors, run by ``align.checks``) and ``defaults`` (recipe
fields its released code fixes: unset, they take that value; set otherwise, the recipe is refused).

A new loss: write its arithmetic in ``align.losses`` and register one entry here; its test goes beside
the others (a reference written out from the authors' code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SCALE_REWARDS = ("group", "batch", "none")
ADVANTAGE_BASELINES = ("group_mean", "leave_one_out")


@dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable
    reduce: str = "tokens"
    divisor: str = "tokens"
    scales_itself: bool = False
    value_free: bool = True
    group_weights: Callable | None = None
    scores_canvas: bool = False
    full_vocab: bool = False
    kl: str = "reference"
    estimators: tuple[str, ...] | None = None
    estimator_note: str = ""
    exclusive: bool = False
    check: Callable | None = None
    defaults: tuple[tuple[str, object], ...] = ()  # recipe fields its released code fixes (align.checks)

    def divisor_count(self, mask, advantages, weights):
        """This objective's divisor of one generation batch on one process (float scalar tensor): the scored
        tokens of ``mask``, the rows with a nonzero advantage, or the (pass, row) pairs of the plan's
        ``weights`` that score something (either layout, [P, B, T] or [B, P, T])."""
        if self.divisor == "passes":
            return (weights != 0).any(-1).sum().float()
        if self.divisor == "rows":
            from align.losses import nonzero_advantage_rows

            return nonzero_advantage_rows(advantages)
        return mask.sum().float()

    def excluded_ids(self, estimator: str, mask_token_id: int) -> list[int]:
        """Token ids renormalised away from the estimate: a trace replay never emits the mask token, except
        for objectives whose released code softmaxes over the whole vocabulary."""
        from align.logprob.kinds import KINDS

        replay = estimator in KINDS and KINDS[estimator].replays and not self.full_vocab
        return [mask_token_id] if replay else []

    @property
    def old_reduce(self) -> str:
        """How the old policy's estimate is kept in the buffer: per-sample sums for a sample-level ratio."""
        return "samples" if self.reduce == "samples" else "tokens"


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"loss_type {name!r} is not one of {list(OBJECTIVES)}.")
    return OBJECTIVES[name]


def check_objective(c) -> None:
    """The objective's requirements on a GRPO config (``align.checks.check_grpo`` calls this)."""
    objective = get_objective(c.loss_type)
    if objective.kl == "none" and c.beta != 0.0:
        raise ValueError(f"loss_type {c.loss_type} has no KL term; set beta 0 (it is {c.beta}).")
    for other in OBJECTIVES.values():
        if other.exclusive and (c.loss_type == other.name) != (c.estimator in other.estimators):
            raise ValueError(
                f"loss_type {other.name} and estimator {other.estimators[0]} go together ({other.estimator_note}); "
                f"got loss_type {c.loss_type!r} with estimator {c.estimator!r}."
            )
    if objective.estimators is not None and c.estimator not in objective.estimators:
        raise ValueError(f"loss_type {c.loss_type} {objective.estimator_note}, not {c.estimator!r}.")
    if objective.check is not None:
        objective.check(c)
    if objective.scores_canvas and c.mask_truncated_completions:
        raise ValueError(
            f"loss_type {c.loss_type} scores every generated position as its released code does; "
            "mask_truncated_completions cannot drop rows from it: set it false."
        )


def reduce_estimate(how: str, plan, passes):
    """The per-pass values [P, n, L] of one estimate reduced as an objective asks (module docstring)."""
    from align.logprob import combine, sample_sums

    if how == "passes":
        return passes
    return sample_sums(plan, passes) if how == "samples" else combine(plan, passes)


def _window(batch, args, accumulation):
    """The divisor of one optimizer step per process: the generation batch's count x GA / its micro-steps."""
    return batch.normalizer * accumulation / args.steps_per_generation


# ---- the ratio family of align.losses.policy_loss (TRL's names and semantics, plus wd1's) ------------
def _ratio_loss(logps, batch, args, accumulation):
    from align.losses import policy_loss

    return policy_loss(
        logps,
        batch.old,
        batch.ref,
        batch.advantages,
        batch.mask,
        loss_type=args.loss_type,
        beta=args.beta,
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
        delta=args.delta,
        importance_sampling_level=args.importance_sampling_level,
        kl_estimator=args.kl_estimator,
        max_completion_length=args.max_completion_length,
        normalizer=_window(batch, args, accumulation),
        num_generations=args.num_generations,
        wd1_psi=args.wd1_psi,
        group_weights=batch.group_weights,
    )


def _wd1_weights(advantages, args):
    from align.losses import wd1_weights

    return wd1_weights(advantages, args.num_generations, args.wd1_psi)


for _name in ("grpo", "bnpo", "dr_grpo"):
    register_objective(Objective(_name, _ratio_loss))
register_objective(Objective("dapo", _ratio_loss, scales_itself=True))
register_objective(
    Objective(
        "wd1",
        _ratio_loss,
        value_free=False,
        group_weights=_wd1_weights,
        kl="none",
        defaults=(("scale_rewards", "none"),),
    )
)  # its code softmaxes raw advantages
register_objective(Objective("wd1_mean", _ratio_loss, value_free=False, group_weights=_wd1_weights))
register_objective(Objective("stabledrl_clip", _ratio_loss))


# ---- SPG and StableDRL (their released code, on SPG's masks and bounds) ----------------------------
def _check_spg(c) -> None:
    if not (c.spg_beta > 0 and 0.0 <= c.spg_mix <= 1.0):
        raise ValueError(f"spg_beta must be > 0 and spg_mix in [0, 1], got {c.spg_beta} and {c.spg_mix}.")


def _check_stabledrl(c) -> None:
    if not c.stabledrl_max_weight > 1.0:
        raise ValueError(f"stabledrl_max_weight must be > 1, got {c.stabledrl_max_weight}.")
    _check_spg(c)


SPG_MASKS = "is its authors' released algorithm on SPG's bounds: it needs SPG's masks (estimator spg)"


def _spg(passes, batch, args, accumulation):
    from align.losses import spg_loss

    return spg_loss(
        passes, batch.plan.weights != 0, batch.advantages, batch.mask, beta=args.spg_beta, mix=args.spg_mix
    )


def _stabledrl(passes, batch, args, accumulation):
    from align.losses import stabledrl_loss

    old = None if batch.old is None else batch.old.sum(-1)  # the rollout policy's lower bound
    return stabledrl_loss(
        passes,
        batch.plan.weights != 0,
        old,
        batch.advantages,
        batch.mask,
        beta=args.spg_beta,
        mix=args.spg_mix,
        max_weight=args.stabledrl_max_weight,
    )


register_objective(
    Objective(
        "stabledrl",
        _stabledrl,
        reduce="passes",
        value_free=False,
        kl="none",
        estimators=("spg",),
        estimator_note=SPG_MASKS,
        check=_check_stabledrl,
        defaults=(("scale_rewards", "none"),),  # networks/llada_svpo.py l. 917-919: the group mean only
    )
)
register_objective(
    Objective(
        "spg",
        _spg,
        reduce="passes",
        value_free=False,
        kl="none",
        estimators=("spg",),
        estimator_note=SPG_MASKS,
        check=_check_spg,
        defaults=(("scale_rewards", "none"),),  # spg_trainer.py l. 718-721: the group mean only
    )
)


# ---- BGPO: per-sample sequence ratios -------------------------------------------------------------
def _check_bgpo(c) -> None:
    if not c.bgpo_dual_clip > 1.0:
        raise ValueError(f"bgpo_dual_clip must be > 1 (dual-clip PPO), got {c.bgpo_dual_clip}.")


def _bgpo(sums, batch, args, accumulation):
    from align.losses import bgpo_loss

    return bgpo_loss(
        sums,
        batch.old,
        batch.advantages,
        batch.mask.sum(-1),
        canvas_length=args.max_completion_length,
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
        dual_clip=args.bgpo_dual_clip,
    )


register_objective(
    Objective("bgpo", _bgpo, reduce="samples", kl="none", check=_check_bgpo, scores_canvas=True)
)


# ---- ESPO: the sequence ratio over its own coupled masks -------------------------------------------
def _espo(logps, batch, args, accumulation):
    from align.losses import espo_loss

    return espo_loss(
        logps,
        batch.old,
        batch.ref,
        batch.advantages,
        canvas_length=args.max_completion_length,
        beta=args.beta,
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
    )


register_objective(
    Objective(
        "espo",
        _espo,
        scores_canvas=True,
        estimators=("espo",),
        exclusive=True,
        estimator_note="ESPO's sequence ratio over its own coupled masks",
        defaults=(("scale_rewards", "none"), ("advantage_baseline", "leave_one_out")),  # as coupled-GRPO's
    )
)


# ---- JustGRPO and TraceRL: losses over replayed rollouts -------------------------------------------
REPLAYED = (
    "is its authors' loss over replayed rollouts: it needs estimator trace (block_trace on block diffusion)"
)


def _check_justgrpo(c) -> None:
    if c.block_length != 1 or c.trace_merge != 1 or c.diffusion_steps != c.max_completion_length:
        raise ValueError(
            "loss_type justgrpo scores the exact left-to-right order: it needs block_length 1, diffusion_steps = "
            f"max_completion_length and trace_merge 1 (got {c.block_length}, {c.diffusion_steps}, {c.trace_merge})."
        )


def _check_tracerl(c) -> None:
    if c.beta != 0.0:
        raise ValueError(
            f"loss_type tracerl has no reference-model KL (beta {c.beta}); its KL is to the rollout policy, "
            "weighted by tracerl_beta: set beta 0."
        )
    if c.tracerl_beta < 0:
        raise ValueError(f"tracerl_beta must be >= 0, got {c.tracerl_beta}.")


def _justgrpo(logps, batch, args, accumulation):  # each generation batch by its own count, gradients summed
    from align.losses import justgrpo_loss

    return justgrpo_loss(
        logps,
        batch.old,
        batch.advantages,
        batch.mask,
        gen_length=args.max_completion_length,
        valid_rows=batch.normalizer,
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
    )


def _tracerl(logps, batch, args, accumulation):
    from align.losses import tracerl_block_loss, tracerl_loss

    if args.estimator == "block_trace":  # the released SDAR trainer's arithmetic (rl_sdar.py)
        length = args.max_completion_length if batch.longest is None else batch.longest  # the released L1
        return tracerl_block_loss(
            logps,
            batch.old,
            batch.advantages,
            batch.plan.weights != 0,
            canvas_length=length,
            passes=_window(batch, args, accumulation),
            epsilon=args.epsilon,
            epsilon_high=args.epsilon_high,
            kl_beta=args.tracerl_beta,
        )
    return tracerl_loss(
        logps,
        batch.old,
        batch.advantages,
        batch.plan.weights != 0,
        passes=_window(batch, args, accumulation),
        epsilon=args.epsilon,
        epsilon_high=args.epsilon_high,
        kl_beta=args.tracerl_beta,
    )


register_objective(
    Objective(
        "justgrpo",
        _justgrpo,
        divisor="rows",
        scales_itself=True,
        scores_canvas=True,
        full_vocab=True,
        kl="none",
        estimators=("trace",),
        estimator_note=REPLAYED,
        check=_check_justgrpo,
        defaults=(("scale_rewards", "group"), ("advantage_baseline", "group_mean")),  # grpo.py l. 58-61
    )
)
register_objective(
    Objective(
        "tracerl",
        _tracerl,
        divisor="passes",
        scales_itself=True,
        full_vocab=True,
        estimators=("trace", "block_trace"),
        estimator_note=REPLAYED,
        check=_check_tracerl,
        # reward/rl_reward.py l. 74-79: the group z-score (its std the population one: advantages 1/1.07 of ours
        # at G 8; its accuracy-band filter and truncation-as-wrong are not reproduced, README)
        defaults=(("scale_rewards", "group"), ("advantage_baseline", "group_mean")),
    )
)
LOSS_TYPES = tuple(OBJECTIVES)
