"""Peak memory of one policy micro-step against Monte Carlo passes: ``mc_backward`` joint vs chunked.

Each configuration runs in its own process: one GRPO step of the real trainer (``align.train``) on a
random-init LLaDA config (CPU, float32), ``estimator coupled`` with ``num_mc_samples`` K (2K passes),
``mc_chunk_size 1``. A thread samples the process's resident memory every 2 ms from the end of the
rollout to the end of the step; the table shows the peak above the resident memory at the rollout's end
(the model, optimizer state and buffer are already there), the update's time (the trainer's
``time/update_s``: estimate + backward + optimizer step) and the logged gradient norm, which must agree
between the two modes. glibc is told to return large frees to the system (``MALLOC_MMAP_THRESHOLD_``) so
that resident memory follows live tensors. Usage (from the repository root):

    python benchmarks/mc_memory.py [--samples 1 2 4 8 --d_model 256 --n_layers 6 --completion 256 --beta 0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMonitor:
    """Polls resident memory in a thread between ``start`` and ``stop``."""

    def __init__(self):
        self.base = self.peak = 0
        self._running = threading.Event()
        threading.Thread(target=self._poll, daemon=True).start()

    def start(self):
        self.base = self.peak = resident_bytes()
        self._running.set()

    def stop(self):
        self._running.clear()
        self.peak = max(self.peak, resident_bytes())

    def _poll(self):
        while True:
            self._running.wait()
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.002)


def variety(completions, **kwargs) -> list[float]:
    """A reward that differs between a random model's completions (distinct characters), so that the
    advantages and the gradient are not zero."""
    return [len(set(text)) / 10 for text in completions]


def child(args) -> None:
    import torch
    from transformers import TrainerCallback

    from align.config import load_config
    from align.models import LLaDAModelLM
    from align.train import build_trainer
    from demos.tiny import build_tokenizer, tiny_config, write_task

    torch.set_num_threads(2)
    work = tempfile.mkdtemp()
    torch.manual_seed(0)
    model = LLaDAModelLM(tiny_config(d_model=args.d_model, n_layers=args.n_layers, mlp_hidden_size=3 * args.d_model,
                                     max_sequence_length=args.completion + 32))  # fmt: skip
    model.save_pretrained(os.path.join(work, "model"))
    build_tokenizer().save_pretrained(os.path.join(work, "model"))
    data = write_task(os.path.join(work, "data"), num_train=16, num_test=1)["train"]
    config = load_config(None, [
        "--model_name_or_path", os.path.join(work, "model"), "--dataset_files", data, "--output_dir",
        os.path.join(work, "out"), "--use_chat_template", "false", "--max_completion_length", str(args.completion),
        "--block_length", str(args.completion), "--diffusion_steps", "4", "--num_generations", str(args.batch),
        "--per_device_train_batch_size", str(args.batch), "--max_steps", "1", "--logging_steps", "1",
        "--dtype", "float32", "--reward_funcs", f"{os.path.abspath(__file__)}:variety", "--report_to", "none", "--save_strategy", "no",
        "--use_cpu", "true", "--estimator", "coupled", "--num_mc_samples", str(args.k), "--mc_chunk_size", "1",
        "--mc_backward", args.mode, "--seed", "0", "--beta", str(args.beta),
    ])  # fmt: skip
    trainer = build_trainer(config)
    monitor = PeakMonitor()
    prepare = trainer._prepare_inputs

    def prepare_then_watch(rows):
        inputs = prepare(rows)
        monitor.start()  # the rollout is done: from here on, the policy estimate, backward and step
        return inputs

    class Stop(TrainerCallback):
        def on_step_end(self, *a, **k):
            monitor.stop()

    trainer._prepare_inputs = prepare_then_watch
    trainer.add_callback(Stop())
    trainer.train()
    log = next(h for h in trainer.state.log_history if "time/update_s" in h)
    print(json.dumps({"extra_gb": (monitor.peak - monitor.base) / 2**30, "update_s": log["time/update_s"],
                      "grad_norm": log["grad_norm"]}))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--samples", type=int, nargs="+", default=[1, 2, 4, 8], help="num_mc_samples values (pairs)"
    )
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_layers", type=int, default=6)
    ap.add_argument("--completion", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument(
        "--beta", type=float, default=0.0, help="KL coefficient (> 0: chunked adds a no-grad estimate)"
    )
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="joint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "2"}
    print(f"random-init LLaDA d_model {args.d_model}, {args.n_layers} layers, batch {args.batch} x "
          f"{args.completion}-token completions, coupled estimator, mc_chunk_size 1, beta {args.beta}, CPU float32")  # fmt: skip
    print("| num_mc_samples (passes) | joint: extra peak | chunked: extra peak | joint: update s | chunked: update s "
          "| grad norm joint / chunked |\n|---|---|---|---|---|---|")  # fmt: skip
    for k in args.samples:
        row = {}
        for mode in ("joint", "chunked"):
            cmd = [sys.executable, __file__, "--child", "--k", str(k), "--mode", mode, "--d_model", str(args.d_model),
                   "--n_layers", str(args.n_layers), "--completion", str(args.completion), "--batch", str(args.batch),
                   "--beta", str(args.beta)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                raise SystemExit(proc.stderr[-3000:])
            row[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        j, c = row["joint"], row["chunked"]
        print(f"| {k} ({2 * k}) | {j['extra_gb']:.2f} GB | {c['extra_gb']:.2f} GB | {j['update_s']:.2f} | "
              f"{c['update_s']:.2f} | {j['grad_norm']:.6f} / {c['grad_norm']:.6f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
