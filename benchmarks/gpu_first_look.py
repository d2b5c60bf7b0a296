"""The first look at a GPU machine: does the project run there from source, and how fast. One JSON file.

On the GPU image (Python 3.12, torch 2.11, transformers 5.17, accelerate; no trl / datasets / math-verify,
no package index), with the wheels of ``requirements/gpu-carry.txt`` (``make gpu-wheels`` puts them in .whl/):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \\
      PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_first_look.py --out $OUT/first_look.json

    python benchmarks/gpu_first_look.py --device cpu --smoke-preset tiny --out x.json   # the same code on CPU

Checks, each recorded with its figures and ``ok`` (one that fails or raises is recorded and the rest run):

1. ``versions``: Python, torch, CUDA, the libraries the project imports, the GPU's name and memory.
2. ``parity``: a tiny LLaDA (with GQA) and a tiny Dream, random weights, float32 with TF32 off: logits on
   the CPU and on the device for a left-padded batch, and the ``elbo`` and ``coupled`` estimates under the
   same masks (drawn once on the CPU). ok: max |difference| <= 1e-3. The device's bf16 estimates against the
   CPU's float32 are reported too (no bound: bf16 is not float32).
3. ``attention``: ``F.scaled_dot_product_attention`` in bf16 under each kernel (flash, efficient, cuDNN,
   math) with the masks the models pass (none, LLaDA's additive key bias [B, 1, 1, L], a boolean [B, 1, L, L]
   as SDAR's block-causal one), with and without GQA (``enable_gqa``): accepted or refused (the error's first
   line), and the max |difference| from the float32 math kernel. A record, not a pass / fail.
4. ``generator_handoff``: the trainer's generator on the device through ``ServerEngine`` to a
   ``DiffusionServer`` on the device, T = 1: tokens equal to in-process decoding and the generator's state
   after equal (the server continues the caller's stream).
5. ``bad_token_id``: in a child process, a forward with an id past the vocabulary on the device (what the
   device does with it: an IndexError on the CPU, a device-side assert on CUDA that leaves the process's CUDA
   context unusable); in this process the server refuses the same request in one line before any kernel
   runs, and then serves a good one.
6. ``smoke``: ``benchmarks/gpu_smoke.py`` on the ``--smoke-preset`` (1b on a GPU): sampler tokens/s per mode,
   GRPO step wall time and its split, peak memory against ``align plan``'s prediction, MFU.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

# import name -> distribution name (the version pip reports)
LIBRARIES = {"transformers": "transformers", "accelerate": "accelerate", "peft": "peft", "trl": "trl",
             "datasets": "datasets", "tokenizers": "tokenizers", "safetensors": "safetensors",
             "huggingface_hub": "huggingface_hub", "math_verify": "math-verify", "numpy": "numpy", "yaml": "pyyaml"}  # fmt: skip
PARITY_TOLERANCE = 1e-3


def versions(device: str) -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name, dist in LIBRARIES.items():
        try:
            importlib.import_module(name)
            out[name] = importlib.metadata.version(dist)
        except Exception as e:  # a missing or broken library is a finding, not a crash
            out[name] = f"not importable: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        out["gpu"] = props.name
        out["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
    import align

    out["align"] = getattr(align, "__version__", "source")
    out["ok"] = not any(str(v).startswith("not importable") for v in out.values())
    return out


def tiny_models() -> dict:
    """Random-weight tiny models, seeded: a LLaDA with GQA (4 query / 2 key-value heads) and a Dream."""
    from align.models import DreamLM, LLaDAModelLM
    from demos.tiny import tiny_config, tiny_dream_config

    torch.manual_seed(0)
    llada = LLaDAModelLM(tiny_config(n_kv_heads=2, weight_tying=False)).eval()
    dream = DreamLM(tiny_dream_config()).eval()
    return {"llada_gqa": llada, "dream": dream}


def _batch(config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of 3 rows x 24 tokens (the padding exercises the attention mask)."""
    vocab = config.vocab_size
    ids = torch.randint(3, vocab, (3, 24), generator=generator)  # past the specials (mask id 2)
    attn = torch.ones_like(ids)
    attn[1, :5] = 0
    attn[2, :11] = 0
    ids[attn == 0] = config.pad_token_id
    return ids, attn


def parity(device: str) -> dict:
    from align.logprob import make_plan, token_logprobs
    from align.logprob.estimators import MaskPlan

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out, worst = {}, 0.0
    for name, cpu_model in tiny_models().items():
        config = cpu_model.config
        moved = type(cpu_model)(config).eval()
        moved.load_state_dict(cpu_model.state_dict())
        moved.to(device)
        half = copy.deepcopy(moved).to(torch.bfloat16)
        gen = torch.Generator().manual_seed(1)
        ids, attn = _batch(config, gen)
        with torch.no_grad():
            a = cpu_model(ids, attention_mask=attn).logits
            b = moved(ids.to(device), attention_mask=attn.to(device)).logits.cpu()
        row = {"logits_max_abs_diff": (a - b).abs().max().item()}
        completion = torch.zeros_like(ids)
        completion[:, 16:] = 1
        for estimator in ("elbo", "coupled"):
            plan = make_plan(estimator, completion, num_samples=2, generator=gen)
            there = MaskPlan(plan.masked.to(device), plan.weights.to(device), plan.num_samples)
            kw = dict(mask_token_id=config.mask_token_id, attention_mask=attn)
            with torch.no_grad():
                here = token_logprobs(cpu_model, ids, plan, **kw).sum(-1)
                kw["attention_mask"] = attn.to(device)
                far = token_logprobs(moved, ids.to(device), there, **kw).sum(-1).cpu()
                bf16 = token_logprobs(half, ids.to(device), there, **kw).sum(-1).float().cpu()
            row[f"{estimator}_max_abs_diff"] = (here - far).abs().max().item()
            row[f"{estimator}_bf16_vs_fp32_max_abs_diff"] = (here - bf16).abs().max().item()
            row[f"{estimator}_cpu_estimates"] = [round(v, 4) for v in here.tolist()]
        worst = max(worst, row["logits_max_abs_diff"], row["elbo_max_abs_diff"], row["coupled_max_abs_diff"])
        out[name] = row
    out["worst_fp32_diff"] = worst
    out["ok"] = worst <= PARITY_TOLERANCE
    return out


def attention(device: str) -> dict:
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    gen = torch.Generator().manual_seed(2)
    b, heads, length, dim = 2, 8, 128, 64
    q = torch.randn(b, heads, length, dim, generator=gen)
    full_kv = torch.randn(2, b, heads, length, dim, generator=gen)
    keep = torch.ones(b, length, dtype=torch.bool)
    keep[1, :37] = False  # a left-padded row
    additive = torch.zeros(b, 1, 1, length).masked_fill(
        ~keep[:, None, None, :], torch.finfo(torch.bfloat16).min
    )
    blocks = torch.arange(length) // 4
    square = (blocks[None, :] <= blocks[:, None])[None, None].expand(b, 1, length, length).contiguous()
    masks = {"none": None, "additive_key_bias": additive, "bool_square": square}
    backends = [n for n in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH") if hasattr(SDPBackend, n)]  # fmt: skip
    out = {}
    for gqa in (False, True):
        kv_heads = 2 if gqa else heads
        k, v = full_kv[0, :, :kv_heads], full_kv[1, :, :kv_heads]
        for mask_name, mask in masks.items():
            kwargs = {"attn_mask": mask, "enable_gqa": gqa}
            reference = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **{
                **kwargs, "attn_mask": None if mask is None else mask.double() if mask.is_floating_point() else mask})  # fmt: skip
            for backend in backends:
                key = f"{backend.lower()}/{'gqa' if gqa else 'mha'}/{mask_name}"
                m = (
                    None
                    if mask is None
                    else mask.to(device, torch.bfloat16 if mask.is_floating_point() else torch.bool)
                )
                try:
                    with sdpa_kernel([getattr(SDPBackend, backend)]):
                        got = F.scaled_dot_product_attention(
                            *(t.to(device, torch.bfloat16) for t in (q, k, v)), attn_mask=m, enable_gqa=gqa
                        )
                    diff = (got.double().cpu() - reference).abs().max().item()
                    out[key] = {"accepted": True, "max_abs_diff_vs_float64": round(diff, 5)}
                except Exception as e:  # a kernel that refuses these inputs: what it said
                    out[key] = {
                        "accepted": False,
                        "error": (str(e).strip().splitlines() or [type(e).__name__])[0][:200],
                    }
    accepted = [k for k, v in out.items() if v["accepted"]]
    out["ok"] = all(
        any(k.endswith(f"/{g}/{m}") for k in accepted) for g in ("mha", "gqa") for m in masks
    )  # some kernel serves every case the models need
    out["accepted_by"] = {
        f"{g}/{m}": [k.split("/")[0] for k in accepted if k.endswith(f"/{g}/{m}")]
        for g in ("mha", "gqa")
        for m in masks
    }
    return out


def _tiny_trained_shape():
    from align.models import LLaDAModelLM
    from demos.tiny import build_tokenizer, tiny_config

    torch.manual_seed(3)
    return LLaDAModelLM(tiny_config()).eval(), build_tokenizer()


def generator_handoff(device: str) -> dict:
    from align.rollout.server import DiffusionServer, ServerEngine
    from align.sampling import SamplerSettings, generate

    model, tokenizer = _tiny_trained_shape()
    model.to(device)
    settings = SamplerSettings(gen_length=16, steps=16, block_length=8, temperature=1.0)
    ids = torch.randint(3, model.config.vocab_size, (4, 10), generator=torch.Generator().manual_seed(4)).to(
        device
    )
    attn = torch.ones_like(ids)
    attn[1, :3] = 0
    mine, theirs = (torch.Generator(device=device).manual_seed(11) for _ in range(2))
    with torch.no_grad():
        local = generate(model, ids, attn, settings, generator=mine)
    server = DiffusionServer(model=model, tokenizer=tokenizer, settings=settings, device=device)
    remote = ServerEngine(server, spec=server.spec).generate(ids, attn, settings, generator=theirs)
    n = local.prompt_length
    same_tokens = torch.equal(local.sequences[:, n:].cpu(), remote.sequences[:, n:].cpu())
    same_state = torch.equal(mine.get_state(), theirs.get_state())
    return {"generator_device": str(mine.device), "tokens_equal": same_tokens, "state_after_equal": same_state,
            "ok": same_tokens and same_state}  # fmt: skip


CHILD = """
import sys, torch
sys.path.insert(0, {repo!r})
from demos.tiny import tiny_config
from align.models import LLaDAModelLM
model = LLaDAModelLM(tiny_config()).to({device!r}).eval()
ids = torch.tensor([[1, 2, model.config.vocab_size]], device={device!r})
try:
    with torch.no_grad():
        model(ids).logits.sum().item()
    print("FORWARD: no error")
except Exception as e:
    print("FORWARD:", type(e).__name__, (str(e).strip().splitlines() or [''])[0][:200])
try:
    print("AFTER:", torch.ones(2, device={device!r}).sum().item())
except Exception as e:
    print("AFTER:", type(e).__name__, (str(e).strip().splitlines() or [''])[0][:200])
"""


def bad_token_id(device: str) -> dict:
    from align.rollout.server import DiffusionServer
    from align.sampling import SamplerSettings

    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
    child = subprocess.run([sys.executable, "-c", CHILD.format(repo=REPO, device=device)], capture_output=True,
                           text=True, timeout=300, env=env)  # fmt: skip
    lines = {
        ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in child.stdout.splitlines() if ":" in ln
    }
    model, tokenizer = _tiny_trained_shape()
    settings = SamplerSettings(gen_length=8, steps=8, block_length=8)
    server = DiffusionServer(model=model, tokenizer=tokenizer, settings=settings, device=device)
    vocab = model.config.vocab_size
    try:
        server.check_prompt([1, 2, vocab], settings)
        refusal = None
    except ValueError as e:
        refusal = str(e)
    good = server.decode_batch([[1, 2, 3]])[0].token_ids
    return {
        "raw_forward": lines.get("FORWARD", child.stderr.strip().splitlines()[-1:] or ["no output"]),
        "same_process_after": lines.get("AFTER"),
        "server_refusal": refusal,
        "served_after_refusal": len(good) > 0,
        "ok": refusal is not None and "\n" not in refusal and str(vocab) in refusal and len(good) > 0,
    }


def smoke(device: str, preset: str, gen_length: int, steps: int) -> dict:
    import gpu_smoke

    model, params = gpu_smoke.build(preset, device)
    out = {"preset": preset, "parameters": params}
    out["sampler"] = gpu_smoke.time_sampler(model, device, gen_length, 8)
    out["grpo"] = gpu_smoke.time_grpo(model, device, gen_length, steps)
    steps_ = out["grpo"]["steps"]
    out["ok"] = bool(steps_) and all(s["wall_s"] > 0 for s in steps_)
    return out


def run_check(name: str, fn, *args) -> dict:
    start = time.perf_counter()
    try:
        result = fn(*args)
    except Exception as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}",
                  "traceback": traceback.format_exc()[-2000:]}  # fmt: skip
    result["seconds"] = round(time.perf_counter() - start, 2)
    status = "ok" if result.get("ok") else "FAILED"
    print(f"[first look] {name}: {status} ({result['seconds']} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--smoke-preset", default=None, help="gpu_smoke preset (default: 1b on CUDA, tiny else)"
    )
    parser.add_argument("--smoke-gen-length", type=int, default=128)
    parser.add_argument("--smoke-steps", type=int, default=2)
    parser.add_argument("--skip", default="", help="checks to leave out, comma-separated (e.g. smoke)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    preset = args.smoke_preset or ("1b" if args.device.startswith("cuda") else "tiny")
    skip = {s for s in args.skip.split(",") if s}
    checks = {
        "versions": (versions, args.device),
        "parity": (parity, args.device),
        "attention": (attention, args.device),
        "generator_handoff": (generator_handoff, args.device),
        "bad_token_id": (bad_token_id, args.device),
        "smoke": (smoke, args.device, preset, args.smoke_gen_length, args.smoke_steps),
    }
    unknown = skip - set(checks)
    if unknown:
        parser.error(f"--skip {sorted(unknown)}: the checks are {sorted(checks)}")
    report = {"device": args.device}
    for name, (fn, *fargs) in checks.items():
        if name not in skip:
            report[name] = run_check(name, fn, *fargs)
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:  # after every check: a run cut short keeps what it measured
                json.dump(report, f, indent=2, default=str)
    report["ok"] = all(report[n]["ok"] for n in checks if n not in skip)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(json.dumps({k: (v if not isinstance(v, dict) else v.get("ok")) for k, v in report.items()}))
    print(json.dumps(figures(report)))
    return report


def figures(report: dict) -> dict:
    """The headline figures of a report, one line: what a README records."""
    out = {}
    if "parity" in report and "worst_fp32_diff" in report["parity"]:
        out["parity_worst_fp32_diff"] = report["parity"]["worst_fp32_diff"]
    if "attention" in report and "accepted_by" in report["attention"]:
        out["kernels_accepting"] = report["attention"]["accepted_by"]
    if "bad_token_id" in report and "raw_forward" in report["bad_token_id"]:
        out["bad_id_raw_forward"] = report["bad_token_id"]["raw_forward"]
        out["bad_id_same_process_after"] = report["bad_token_id"]["same_process_after"]
    smoke = report.get("smoke", {})
    if "grpo" in smoke:
        steps = smoke["grpo"]["steps"]
        out["smoke_parameters"] = smoke["parameters"]
        out["sampler_tokens_per_s"] = {m: round(v["tokens_per_s"]) for m, v in smoke["sampler"].items()}
        out["grpo_step_s"] = [round(st["wall_s"], 2) for st in steps]
        out["grpo_rollout_s"] = [round(st["time/rollout_s"] or 0, 2) for st in steps]
        mfu = [st["mfu"] for st in steps if st["mfu"]]
        out["mfu"] = round(sum(mfu) / len(mfu), 4) if mfu else None
        out["peak_gib_measured"] = smoke["grpo"]["measured_peak_gib"]
        out["peak_gib_plan"] = max(smoke["grpo"]["plan_peak_gib"].values())
    return out


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
