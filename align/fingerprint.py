"""A run's fingerprint: the recipe values that decide what a run computes, saved in every checkpoint and
compared when a run resumes, so that a resumed run never trains on something its user did not ask for.

What counts: every field of the project's own recipe dataclasses (``align.fields``: model, data, rollout,
sampler, estimator, loss, rewards and their weights, group size) except the operational ones below, the
optimisation fields of ``TrainingArguments`` in ``TRAINING_FIELDS`` (learning rate and schedule, batch
arithmetic, seed), the mask id and family of the loaded model, and the identity of local data files (size and a
digest of their first and last MiB). What does not count: where and how often the run logs and saves, how long
it may run (``max_steps``, ``max_time_s``: extending a run is the usual reason to resume), and settings that
change memory or transport but not the numbers (``mc_chunk_size``, ``mc_backward``, ``rollout_batch_size``,
``rollout_engine``).

Resuming into different values stops with one line naming each field with its old and new value; ``--allow_changed
FIELD ...`` (or ``all``) accepts them on purpose: the accepted changes are logged and kept, with the step they
were accepted at, in the fingerprint of every later checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

from align.errors import UsageError

FILE = "run_fingerprint.json"

OPERATIONAL = frozenset(
    {
        "max_time_s",
        "allow_changed",
        "overwrite_output_dir",
        "reward_timeout_s",
        "rollout_batch_size",
        "rollout_engine",
        "ray_address",
        "max_gpu_memory_gb",
        "mc_chunk_size",
        "mc_backward",
        "eval_tasks",
        "eval_protocol",
        "eval_limit",
        "eval_data_dir",
        "log_completions",
        "num_completions_to_print",
        "on_nonfinite",
    }
)
TRAINING_FIELDS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "bf16",
    "fp16",
)
_DIGEST_EDGE = 1 << 20


def _plain(value):
    """A JSON-able form of a field value (lists for tuples, str for anything else)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    return str(getattr(value, "value", value))  # enums (lr_scheduler_type) by their value


def _file_identity(path: str) -> str:
    """``size:sha256`` of a local data file's first and last MiB (the whole file when smaller)."""
    if not os.path.isfile(path):
        return "absent"
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_DIGEST_EDGE))
        if size > 2 * _DIGEST_EDGE:
            f.seek(size - _DIGEST_EDGE)
        digest.update(f.read(_DIGEST_EDGE))
    return f"{size}:{digest.hexdigest()[:16]}"


def run_fields(config, spec=None) -> dict:
    """{field: value} of what ``config`` (a GRPO, SFT or DPO config) computes; ``spec`` is the model's family
    spec (its mask id and family name)."""
    from align.recipe import our_fields

    names = [n for n in our_fields(type(config)) if n not in OPERATIONAL]
    fields = {n: _plain(getattr(config, n)) for n in names}
    fields.update({n: _plain(getattr(config, n)) for n in TRAINING_FIELDS if hasattr(config, n)})
    if getattr(config, "dataset_files", None):
        fields["dataset_files_identity"] = [_file_identity(p) for p in config.dataset_files]
    if spec is not None:
        fields["model_type"] = spec.model_type
        fields["model_mask_token_id"] = spec.mask_token_id
    return fields


def fingerprint(fields: dict, accepted: list | None = None) -> dict:
    text = json.dumps(fields, sort_keys=True)
    return {"sha256": hashlib.sha256(text.encode()).hexdigest(), "fields": fields, "accepted": accepted or []}


def changes(saved: dict, now: dict) -> dict[str, tuple]:
    """{field: (old, new)} for every field whose value differs (a field only one side has counts too)."""
    missing = object()
    out = {}
    for name in sorted(set(saved) | set(now)):
        old, new = saved.get(name, missing), now.get(name, missing)
        if old != new:
            out[name] = (None if old is missing else old, None if new is missing else new)
    return out


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_resume(checkpoint: str, now: dict, allow: list[str] | None, log=None) -> list:
    """Compare the checkpoint's fingerprint with this run's fields. Returns the accepted-changes history to
    carry into later checkpoints; raises ``UsageError`` naming every change that was not allowed. A
    checkpoint from before fingerprints (no file) is resumed with a warning."""
    path = os.path.join(checkpoint, FILE)
    warn = log or logging.getLogger("align").warning
    if not os.path.isfile(path):
        warn(
            f"resuming {checkpoint}: it has no {FILE} (saved before run fingerprints); its recipe cannot be "
            "compared with this run's."
        )
        return []
    with open(path) as f:
        saved = json.load(f)
    found = changes(saved.get("fields", {}), now)
    history = list(saved.get("accepted", []))
    if not found:
        return history
    allow = list(allow or [])
    unknown = [a for a in allow if a != "all" and a not in found and a not in now]
    if unknown:
        raise UsageError(
            f"allow_changed {' '.join(unknown)}: no such fingerprint field; the fields that changed "
            f"are {' '.join(found)}."
        )
    refused = {k: v for k, v in found.items() if "all" not in allow and k not in allow}
    if refused:
        listed = "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in refused.items())
        raise UsageError(
            f"resume from {checkpoint}: this run's recipe differs from the checkpoint's: {listed}. Use the "
            f"checkpoint's values, or accept the change on purpose with --allow_changed {' '.join(refused)} "
            "(or all)."
        )
    step = saved.get("step")
    warn(
        f"resuming {checkpoint} with changed recipe values (allow_changed): "
        + "; ".join(f"{k} {_show(old)} -> {_show(new)}" for k, (old, new) in found.items())
    )
    return history + [{"step": step, "changes": {k: [old, new] for k, (old, new) in found.items()}}]


def write(folder: str, fields: dict, accepted: list, step: int) -> None:
    with open(os.path.join(folder, FILE), "w") as f:
        json.dump({**fingerprint(fields, accepted), "step": step}, f, indent=1, sort_keys=True)
