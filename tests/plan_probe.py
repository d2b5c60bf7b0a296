"""Peak resident memory of one phase, measured in a fresh process (used by tests/test_plan.py).

    python tests/plan_probe.py PHASE '{"d_model": 256, ...}'  -> prints {"bytes": N}

PHASE: rollout (one sampler call), estimate (no-grad passes of a micro-batch) or policy (the same passes
with grad, then backward). The model is a random-init LLaDA in float32 on CPU; the peak is over the
resident memory just before the phase: the kernel's high-water mark (VmHWM, reset before the phase), or where
that cannot be reset, resident memory polled every 1 ms; glibc returns large frees at once.
"""

import json
import os
import sys
import threading
import time

os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    import torch

    from align.logprob import make_plan, pass_logprobs
    from align.models import LLaDAConfig, LLaDAModelLM
    from align.models.family import family_spec
    from align.sampling import SamplerSettings, generate

    phase, shape = sys.argv[1], json.loads(sys.argv[2])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows, prompt, completion = shape.pop("rows"), shape.pop("prompt"), shape.pop("completion")
    chunk, block = shape.pop("chunk", 1), shape.pop("block", 32)
    checkpointing = shape.pop("checkpointing", False)
    config = LLaDAConfig(**shape, mask_token_id=shape["vocab_size"] - 1, eos_token_id=1, pad_token_id=0,
                         bos_token_id=0, max_sequence_length=prompt + completion)  # fmt: skip
    model = LLaDAModelLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable()
    ids = torch.randint(2, shape["vocab_size"] - 1, (rows, prompt + completion))
    attn = torch.ones_like(ids)
    canvas = torch.zeros_like(ids)
    canvas[:, prompt:] = 1
    plan = make_plan("elbo", canvas, num_samples=chunk, generator=torch.Generator().manual_seed(0))
    peak, running = [0], threading.Event()

    def poll():
        while running.is_set():
            peak[0] = max(peak[0], resident())
            time.sleep(0.001)

    model.train() if phase == "policy" else model.eval()

    def run(r: int) -> None:
        if phase == "rollout":
            with torch.no_grad():
                settings = SamplerSettings(
                    gen_length=completion, block_length=block, steps=completion // block * 2, temperature=1.0
                )
                spec = family_spec(model, mask_token_id=config.mask_token_id)
                generate(model, ids[:r, :prompt], attn[:r, :prompt], settings, spec=spec)
            return
        part = type(plan)(plan.masked[:, :r], plan.weights[:, :r], plan.num_samples)
        with torch.set_grad_enabled(phase == "policy"):
            values = pass_logprobs(model, ids[:r], part, mask_token_id=config.mask_token_id, attention_mask=attn[:r],
                                   chunk_size=chunk)  # fmt: skip
        if phase == "policy":
            values.sum().backward()
            model.zero_grad(set_to_none=False)  # gradients stay allocated, as in training

    run(1)  # first-call initialisation (kernels, thread pools) and the gradient buffers are not the phase's
    base = resident()
    exact = _reset_high_water_mark()
    running.set()
    thread = threading.Thread(target=poll)
    thread.start()
    run(rows)
    running.clear()
    thread.join()
    top = _high_water_mark() if exact else max(peak[0], resident())  # the kernel's peak misses no spike
    print(json.dumps({"bytes": top - base}))


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak resident size (VmHWM) to the current one; False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _high_water_mark() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


if __name__ == "__main__":
    main()
