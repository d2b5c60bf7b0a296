"""Checkpoints that are complete or absent, and runs that stop cleanly when asked (GRPO, SFT and DPO trainers).

A checkpoint is written into ``OUTPUT_DIR/.staging/checkpoint-N`` by every rank, then, once all ranks are
done, the saving process writes ``checkpoint_complete.json`` (every file's size) and renames the folder to
``OUTPUT_DIR/checkpoint-N``; older checkpoints are rotated only after that. A folder named
``checkpoint-N`` without a manifest, or whose files do not have the sizes it lists, is incomplete (an older
writer, a disk that filled later, a copy cut short); one whose files no longer match the manifest's checksums
(XXH3-128, BLAKE2b without xxhash; checked when resuming) is corrupted: ``--resume_from_checkpoint true``
takes the newest complete, uncorrupted one and says which it skipped; an explicit incomplete path is refused naming the newest complete.
Multi-node runs need ``output_dir`` on a filesystem every node shares (as DeepSpeed checkpoints already do).

SIGTERM (what SLURM and Kubernetes send before preemption) and SIGINT request a stop: the optimizer step in
progress finishes, every rank agrees at its end, a checkpoint is saved and the run exits with one line naming
it (status 143 / 130). A second signal stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import sys

from transformers import TrainerCallback

from align import fingerprint
from align.errors import RunError, UsageError

STAGING = ".staging"
MANIFEST = "checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


class Stopped(RunError):
    """The run stopped on a signal after saving a checkpoint (exit 128 + the signal's number)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def _files(folder: str) -> dict[str, int]:
    sizes = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            sizes[os.path.relpath(path, folder)] = os.path.getsize(path)
    return sizes


def _digest(algorithm: str | None = None):
    """A new hash object: XXH3-128 (xxhash, several GB/s) when installed, else BLAKE2b-128."""
    import hashlib

    if algorithm in (None, "xxh3_128"):
        try:
            import xxhash

            return xxhash.xxh3_128()
        except ImportError:
            if algorithm is not None:
                raise
    if algorithm in (None, "blake2b"):
        return hashlib.blake2b(digest_size=16)
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def _checksum(path: str, algorithm: str) -> str:
    digest = _digest(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _checksums(folder: str, names) -> dict:
    algorithm = "xxh3_128" if type(_digest()).__module__.startswith("xxhash") else "blake2b"
    return {
        "algorithm": algorithm,
        "files": {n: _checksum(os.path.join(folder, n), algorithm) for n in sorted(names)},
    }


def checkpoint_problem(folder: str, verify_content: bool = False) -> str | None:
    """Why ``folder`` is not a complete checkpoint written by this project, or None when it is. Sizes are
    always checked; ``verify_content`` also checks every file's checksum (manifests from before checksums
    have sizes only)."""
    manifest = os.path.join(folder, MANIFEST)
    if not os.path.isfile(manifest):
        return f"it has no {MANIFEST} (its save did not finish)"
    try:
        with open(manifest) as f:
            content = json.load(f)
        listed, sums = content["files"], content.get("checksums")
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    for name, size in listed.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"its file {name} is missing"
        if os.path.getsize(path) != size:
            return f"its file {name} has {os.path.getsize(path)} of {size} bytes"
    if verify_content and sums:
        for name, expected in sums["files"].items():
            try:
                actual = _checksum(os.path.join(folder, name), sums["algorithm"])
            except (ImportError, ValueError, OSError) as exc:
                return f"its file {name} cannot be checked ({exc})"
            if actual != expected:
                return f"its file {name} does not match its {sums['algorithm']} checksum (corrupted after writing)"
    return None


def checkpoints(output_dir: str) -> tuple[list[str], dict[str, str]]:
    """(complete checkpoint folders, oldest first; {incomplete folder: why})."""
    if not os.path.isdir(output_dir):
        return [], {}
    found = sorted(
        (int(m.group(1)), name)
        for name in os.listdir(output_dir)
        if (m := _CHECKPOINT.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    complete, incomplete = [], {}
    for _, name in found:
        path = os.path.join(output_dir, name)
        problem = checkpoint_problem(path)
        if problem is None:
            complete.append(path)
        else:
            incomplete[path] = problem
    return complete, incomplete


def resolve_resume(output_dir: str, value, log=None) -> str | None:
    """``resume_from_checkpoint``: None / false -> None; true -> the newest complete checkpoint (skipped
    incomplete ones said in one line through ``log``); a path -> itself when complete, else a one-line error."""
    if value is None or value is False or str(value).lower() == "false":
        return None
    complete, incomplete = checkpoints(output_dir)
    newest = complete[-1] if complete else None
    if value is True or str(value).lower() == "true":
        while newest is not None and (corrupt := checkpoint_problem(newest, verify_content=True)) is not None:
            incomplete[newest] = corrupt
            complete.pop()
            newest = complete[-1] if complete else None
        if newest is None:
            detail = f" ({len(incomplete)} incomplete: {', '.join(sorted(incomplete))})" if incomplete else ""
            raise UsageError(
                f"resume_from_checkpoint true: {output_dir} holds no complete checkpoint-N folder to resume from"
                f"{detail}; start without it or give a checkpoint path."
            )
        skipped = [p for p in incomplete if _step(p) > _step(newest)]
        if skipped and log is not None:
            log(
                f"resuming from {newest}; skipped incomplete "
                + "; ".join(f"{p} ({incomplete[p]})" for p in skipped)
            )
        return newest
    path = str(value)
    if not os.path.isdir(path):
        raise UsageError(
            f"resume_from_checkpoint {path} is not a folder; give a checkpoint-N folder or true."
        )
    problem = checkpoint_problem(path, verify_content=True)
    if problem is not None:
        last = f"the newest complete one is {newest}" if newest else f"{output_dir} holds no complete one"
        raise UsageError(f"resume_from_checkpoint {path} is incomplete: {problem}; {last} (or pass true).")
    return path


def _step(path: str) -> int:
    return int(_CHECKPOINT.match(os.path.basename(path)).group(1))


def _fsync_tree(folder: str) -> None:
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(staged: str, final: str, step: int) -> None:
    """The last act of a save: every file synced, the manifest (sizes, checksums) written, the staged folder
    renamed to ``final`` (``OUTPUT_DIR/checkpoint-N``): a kill before the rename leaves no checkpoint-N."""
    _fsync_tree(staged)
    manifest = os.path.join(staged, MANIFEST)
    files = _files(staged)
    with open(manifest + ".tmp", "w") as f:
        json.dump({"step": step, "files": files, "checksums": _checksums(staged, files)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(manifest + ".tmp", manifest)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staged, final)
    _fsync_dir(os.path.dirname(final) or ".")


def save_failed(run_dir: str, name: str, staged: str, exc: OSError) -> RunError:
    """The one line for a save the disk refused: what failed, that nothing was renamed, where to resume."""
    complete, _ = checkpoints(run_dir)
    last = complete[-1] if complete else "none"
    return RunError(
        f"saving {name} failed ({exc.strerror or exc}: {exc.filename or staged}); nothing was renamed, the "
        f"newest complete checkpoint is {last}: free space and resume with --resume_from_checkpoint true."
    )


def rotate(run_dir: str, limit: int, best: str | None = None) -> None:
    """Keep the newest ``limit`` checkpoints (and ``best``), after a new one is in place."""
    from transformers.trainer_utils import rotate_checkpoints

    rotate_checkpoints(output_dir=run_dir, save_total_limit=limit, best_model_checkpoint=best, use_mtime=True)


class _StopOnSignal(TrainerCallback):
    """Turns a signal into "save and stop" at the end of the current optimizer step, the same step on every
    rank (the request is all-reduced there)."""

    def __init__(self, trainer):
        self.trainer, self.signum, self.stopped_at = trainer, None, None

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        requested = torch.tensor(
            [0.0 if self.signum is None else float(self.signum)], device=self.trainer.accelerator.device
        )
        if self.trainer.accelerator.num_processes > 1:
            requested = self.trainer.accelerator.reduce(requested, reduction="sum")
        if requested.item() > 0:
            self.signum = self.signum or signal.SIGTERM  # another rank's signal
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


class SafeCheckpointMixin:
    """For ``transformers.Trainer`` subclasses: staged, manifest-checked checkpoints (``_save_extra(folder)``
    adds a trainer's own files before the rename), resume from the newest complete one, stop on signals."""

    _staging = False

    def _get_output_dir(self, trial):
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._staging else run_dir

    def _save_extra(self, folder: str) -> None:
        """Files of the subclass's own, written into the staged checkpoint before it is renamed."""

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        staged, final = os.path.join(run_dir, STAGING, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.exists(staged):
            shutil.rmtree(staged)  # a save that failed here before
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the rename
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
            self._save_extra(staged)
            if self.args.should_save:
                fingerprint.write(
                    staged, self._run_fields(), getattr(self, "_accepted_changes", []), self.state.global_step
                )
        except OSError as exc:
            raise save_failed(run_dir, name, staged, exc) from exc
        finally:
            self._staging = False
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            best = self.state.best_model_checkpoint
            if best and os.path.dirname(os.path.abspath(best)) == os.path.abspath(
                os.path.join(run_dir, STAGING)
            ):
                # the Trainer found the best checkpoint in the staging folder: name it where it will be
                self.state.best_model_checkpoint = os.path.join(run_dir, os.path.basename(best))
                self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            publish(staged, final, self.state.global_step)
            if limit is not None:
                rotate(run_dir, limit, self.state.best_model_checkpoint)
        self.accelerator.wait_for_everyone()

    def _run_fields(self) -> dict:
        """This run's fingerprint fields (``align.fingerprint``), computed once."""
        if getattr(self, "_fingerprint_fields", None) is None:
            self._fingerprint_fields = fingerprint.run_fields(self.args, getattr(self, "spec", None))
        return self._fingerprint_fields

    def _get_grad_norm(self, model, grad_norm=None):
        """The step's gradient norm (the same on every rank); a non-finite one stops the run here, before the
        optimizer step, or drops the update (``on_nonfinite: skip``)."""
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(norm)
        if math.isfinite(value):
            return norm
        step = self.state.global_step + 1
        if getattr(self.args, "on_nonfinite", "stop") == "skip":
            self.optimizer.zero_grad(
                set_to_none=True
            )  # no gradient: the optimizer leaves every weight as it is
            self._nonfinite_skipped = getattr(self, "_nonfinite_skipped", 0) + 1
            logging.getLogger("align").warning(
                "step %d: gradient norm %s, update skipped (on_nonfinite: skip; %d so far).",
                step,
                value,
                self._nonfinite_skipped,
            )
            return norm
        complete, _ = checkpoints(self.args.output_dir)
        last = complete[-1] if complete else "none yet"
        raise RunError(
            f"step {step}: the gradient norm is {value}; stopped before updating the weights (nothing saved). The "
            f"newest complete checkpoint is {last}. Lower learning_rate (it is {self.args.learning_rate:g}) or "
            "set on_nonfinite: skip to drop such updates."
        )

    def train(self, resume_from_checkpoint=None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or true for the newest complete one in output_dir.
        SIGTERM / SIGINT save a checkpoint at the end of the current step and raise ``Stopped``."""
        log = logging.getLogger("align").warning if self.accelerator.is_main_process else None
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint, log)
        if resume is not None:
            self._accepted_changes = fingerprint.check_resume(
                resume, self._run_fields(), getattr(self.args, "allow_changed", None), log or (lambda _: None)
            )
        stop = next((c for c in self.callback_handler.callbacks if isinstance(c, _StopOnSignal)), None)
        if stop is None:
            stop = _StopOnSignal(self)
            self.add_callback(stop)
        previous = {}

        def request(signum, frame):
            if stop.signum is not None:  # the second signal: stop now
                for s, handler in previous.items():
                    signal.signal(s, handler)
                raise KeyboardInterrupt
            stop.signum = signum
            if self.accelerator.is_main_process:
                print(
                    f"align: {signal.Signals(signum).name}: finishing step {self.state.global_step + 1}, saving a "
                    "checkpoint, then stopping (send it again to stop at once).",
                    file=sys.stderr,
                    flush=True,
                )

        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                previous[s] = signal.signal(s, request)
        try:
            output = super().train(resume_from_checkpoint=resume, **kwargs)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stop.stopped_at is not None:
            name = signal.Signals(stop.signum).name
            raise Stopped(
                f"stopped by {name} after step {stop.stopped_at}: saved "
                f"{os.path.join(self.args.output_dir, f'checkpoint-{stop.stopped_at}')}; resume with "
                "--resume_from_checkpoint true.",
                stop.signum,
            )
        return output
