"""The verl adapter (align.verl): the project's losses under verl's policy-loss registry with verl's global
batch normalisation, masks drawn on the driver, a Ray worker group of 2 CPU workers (gloo) giving one
process's loss and gradients, splits 8 + 8 and 4 x 4 alike, the rollout replica and the config refusals.
Ray is started and stopped here."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

verl = pytest.importorskip("verl")
ray = pytest.importorskip("ray")

from align.losses import policy_loss  # noqa: E402
from align.models import family_spec, load_model, load_tokenizer  # noqa: E402

MODEL = "recipes/tiny/model"


def _inputs(rows=16, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(rows, length, generator=g) * 2
    old = logp + 0.4 * torch.randn(
        rows, length, generator=g
    )  # off-policy: ratios away from 1, clipping active
    adv = torch.randn(rows, 1, generator=g).expand(rows, length).clone()
    adv[:3] = 0.0  # zero advantages
    mask = torch.ones(rows, length)
    for i in range(rows):  # unequal lengths
        mask[i, 1 + i % length :] = 0
    return logp, old, adv, mask


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo", "dr_grpo"])
def test_registered_losses_are_the_projects_and_split_by_verls_global_batch_info(loss_type):
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.workers.config import ActorConfig  # noqa: F401  (the config type verl passes)

    from align.verl import register_policy_losses

    assert f"dllm_{loss_type}" in register_policy_losses()
    fn = get_policy_loss_fn(f"dllm_{loss_type}")
    logp, old, adv, mask = _inputs()
    config = type("Cfg", (), {"clip_ratio": 0.2, "clip_ratio_low": 0.2, "clip_ratio_high": 0.28,
                              "global_batch_info": {}})()  # fmt: skip
    whole = logp.clone().requires_grad_(True)
    loss, _ = fn(old, whole, adv, mask.bool(), config=config)
    expected, _ = policy_loss(logp, old, None, adv, mask, loss_type=loss_type, epsilon=0.2, epsilon_high=0.28,
                              max_completion_length=mask.shape[1])  # fmt: skip
    assert torch.allclose(loss, expected, atol=1e-7)
    loss.backward()
    # two data-parallel shards: verl passes the global counts; DDP averages the shards' gradients
    config.global_batch_info = {"dp_size": 2, "batch_num_tokens": float(mask.sum()), "global_batch_size": 16}
    parts, grads = [], []
    for rows in (slice(0, 8), slice(8, 16)):
        shard = logp[rows].clone().requires_grad_(True)
        part, _ = fn(old[rows], shard, adv[rows], mask[rows].bool(), config=config)
        part.backward()
        parts.append(part)
        grads.append(shard.grad)
    assert torch.allclose(torch.stack(parts).mean(), loss, atol=1e-6)
    assert torch.allclose(torch.cat(grads) / 2, whole.grad, atol=1e-7)


def _batch(tok, spec, rows=16):
    data = [json.loads(line) for line in open("recipes/tiny/data/test.jsonl")][:rows]
    prompts = [tok.encode(r["question"]) for r in data]
    answers = [tok.encode(r["completion"], add_special_tokens=False) + [spec.eos_token_id] for r in data]
    width, length = max(map(len, prompts)), 8
    pad = spec.pad_token_id if spec.pad_token_id is not None else spec.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p + (a + [spec.eos_token_id] * length)[:length]
                        for p, a in zip(prompts, answers, strict=True)])  # fmt: skip
    attn = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + length) for p in prompts])
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, width:] = True
    response = completion.clone()
    for i, a in enumerate(answers):
        response[i, width + len(a) :] = False  # scored: the answer up to its EOS
    adv = torch.randn(rows, generator=torch.Generator().manual_seed(4))
    adv[:2] = 0.0
    return ids, attn, completion, response, adv


def _reference(model, spec, fields, args, num_samples, count, chunks=1):
    """One process, the project's objective on the project's estimate: all 16 rows as one micro-batch, or (a
    loss normalised by its own batch, as SPG's released code is per device) the mean over ``chunks`` equal
    row slices, which is what the trainer computes for that many processes x micro-batches."""
    from align.verl import shard_loss

    model.zero_grad(set_to_none=True)
    n, total = 16 // chunks, 0.0
    for start in range(0, 16, n):
        part = {k: v[start : start + n] for k, v in fields.items()}
        loss, _ = shard_loss(model, spec, part, args, num_samples=num_samples, normalizer=count)
        (loss / chunks).backward()
        total += loss.detach() / chunks
    return total, torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def workers():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 writes an auth token otherwise
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    from align.verl import DiffusionPolicyWorker

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False,  # logical CPUs: 2 groups + a server
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}})  # fmt: skip
    try:
        pool = RayResourcePool([2], use_gpu=False, max_colocate_count=1)  # 1: else it hangs
        cls = RayClassWithInitArgs(cls=ray.remote(DiffusionPolicyWorker), model_path=MODEL,
                                   loss={"loss_type": "dapo", "estimator": "coupled"})  # fmt: skip
        group = RayWorkerGroup(resource_pool=pool, ray_cls_with_init=cls, device_name="cpu")
        assert group.init_model() == [2, 2]
        yield group
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "loss,estimator,num_samples", [("dapo", "coupled", 1), ("spg", "spg", 2), ("bgpo", "elbo", 2)]
)
def test_two_ray_workers_give_one_process_loss_and_gradients_for_any_split(
    workers, loss, estimator, num_samples
):
    from verl import DataProto

    from align.verl import count_for, loss_args, mask_fields

    model, tok = load_model(MODEL, dtype="float32"), load_tokenizer(MODEL)
    model.train()
    spec = family_spec(model, tok)
    ids, attn, completion, response, adv = _batch(tok, spec)
    fields = {"input_ids": ids, "attention_mask": attn, "response_mask": response, "advantages": adv,
              **mask_fields(completion, estimator=estimator, num_samples=num_samples, seed=11, score_mask=response,
                           block_length=4)}  # fmt: skip
    overrides = {"loss_type": loss, "estimator": estimator}
    args = loss_args(**overrides, num_mc_samples=num_samples)
    count = count_for(loss, response, adv, fields["mc_weights"])
    meta = {"num_samples": num_samples, "count": count, "loss": overrides}
    old = workers.compute_log_prob(DataProto.from_dict(tensors=fields, meta_info=meta)).batch["old_log_probs"]
    with torch.no_grad():  # the same plan in this process: the driver's masks reached both workers
        from align.logprob.estimators import pass_logprobs
        from align.objectives import get_objective, reduce_estimate
        from align.verl import plan_of

        plan = plan_of(fields, num_samples)
        mine = reduce_estimate(get_objective(loss).old_reduce, plan, pass_logprobs(
            model, ids, plan, mask_token_id=spec.mask_token_id, attention_mask=attn, spec=spec))  # fmt: skip
    assert torch.allclose(old, mine, atol=1e-6)
    if loss == "dapo":  # off-policy ratios for the clipped surrogate
        fields["old_log_probs"] = (
            old + 0.3 * torch.randn(old.shape, generator=torch.Generator().manual_seed(2)) * response
        )
    for micro in (8, 4):  # 8 + 8 (one micro-batch per worker) and 4 x 4 (two per worker)
        # dapo divides by the batch's token count, carried as meta_info["count"]: any split is the whole batch;
        # spg and bgpo by each micro-batch's own lengths (their released code, per device): the mean over slices
        ref_loss, ref_grad = _reference(model, spec, fields, args, num_samples, count,
                                        chunks=1 if loss == "dapo" else 16 // micro)  # fmt: skip
        out = workers.compute_loss_grads(DataProto.from_dict(tensors=fields,
                                                             meta_info={**meta, "micro_batch_size": micro}))  # fmt: skip
        loss_value, grad = out.batch["loss"], out.batch["grad"]
        assert torch.equal(grad[0], grad[1])  # averaged: every worker holds the same gradient
        assert torch.allclose(loss_value[0], ref_loss, atol=1e-6), (micro, loss_value, ref_loss)
        assert torch.allclose(grad[0], ref_grad, atol=1e-6), (micro, (grad[0] - ref_grad).abs().max())
        assert ref_grad.abs().max() > 1e-4  # a real gradient


def test_the_rollout_replica_registers_and_bad_verl_configs_are_refused():
    from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry

    from align.verl import check_verl_config, register_rollout

    register_rollout()
    assert issubclass(RolloutReplicaRegistry.get("dllm_align"), RolloutReplica)
    good = {"actor_rollout_ref": {"rollout": {"name": "dllm_align"}, "actor": {"strategy": "dllm_align"}}}
    check_verl_config(good, "llada")
    bad_rollout = {"actor_rollout_ref": {"rollout": {"name": "vllm"}, "actor": {"strategy": "dllm_align"}}}
    with pytest.raises(
        ValueError, match="rollout.name 'vllm' cannot roll out the dense diffusion LM 'llada'.*'dllm_align'"
    ):
        check_verl_config(bad_rollout, "llada")
    causal = {"actor_rollout_ref": {"rollout": {"name": "dllm_align"}, "actor": {"strategy": "fsdp"}}}
    with pytest.raises(
        ValueError, match="strategy 'fsdp' scores 'llada' with causal next-token log-probabilities"
    ):
        check_verl_config(causal, "llada")


PROBE = (
    "import verl\n"
    "from verl.workers.rollout.replica import RolloutReplicaRegistry\n"
    "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY\n"
    "from verl.workers.rollout.base import get_rollout_class\n"
    "print(get_rollout_class('dllm_align', 'async').__name__)\n"
    "print(RolloutReplicaRegistry.get('dllm_align').__name__, sorted(k for k in POLICY_LOSS_REGISTRY if k.startswith('dllm_')))\n"
)


@pytest.mark.parametrize("route", ["entry_point", "external_modules"])
def test_verl_reaches_our_pieces_through_its_own_plugin_routes(tmp_path, route):
    """A fresh interpreter that only imports verl (outside the checkout, as verl's TaskRunner and workers do):
    the installed package's ``verl.plugins`` entry point, or ``VERL_USE_EXTERNAL_MODULES=align.verl`` with
    entry-point discovery off, registers the rollout replica, its BaseRollout adapter and the policy losses; no
    call of ours."""
    env = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "auto" if route == "entry_point" else "none"}
    if route == "external_modules":
        env["VERL_USE_EXTERNAL_MODULES"] = "align.verl"
    else:
        env.pop("VERL_USE_EXTERNAL_MODULES", None)
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert (
        out.stdout.split("\n")[-2]
        == "DiffusionReplica ['dllm_bnpo', 'dllm_dapo', 'dllm_dr_grpo', 'dllm_grpo']"
    )
    assert out.stdout.split("\n")[-3] == "DiffusionRolloutAdapter"  # the hybrid worker's BaseRollout


def test_the_single_controller_grpo_loop_trains_two_steps_on_cpu(workers, tmp_path):
    """align.verl.train: 2 workers + 1 rollout server on Ray, the tiny recipe, 2 steps: every step's weights
    reach the server and the policy moves."""
    from align.config import load_config
    from align.verl import train

    config = load_config("recipes/tiny/grpo.yaml", ["--max_steps", "2", "--per_device_train_batch_size", "8",
                                                    "--output_dir", str(tmp_path), "--report_to", "none",
                                                    "--learning_rate", "1e-3"])  # fmt: skip
    states = []
    history = train(config, workers=2, servers=1, on_step=lambda entry, state: states.append(state))
    assert [h["step"] for h in history] == [1, 2] and [h["weights_version"] for h in history] == [1, 2]
    assert all(torch.isfinite(torch.tensor(h["loss"])) and 0.0 <= h["reward"] <= 1.1 for h in history)
    initial = load_model(MODEL, dtype="float32").state_dict()
    assert any(not torch.equal(states[-1][k], initial[k]) for k in initial)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in initial)


def test_the_loop_saves_checkpoints_and_a_resumed_run_equals_the_uninterrupted_one(workers, tmp_path):
    """align.verl.train with save_steps 1: checkpoint-1 and checkpoint-2 as align train writes them (manifest,
    fingerprint, weights align eval loads). Resumed from checkpoint-1, step 2 has the uninterrupted run's loss,
    reward and weights, bit for bit; a changed recipe is refused naming the field."""
    from align.checkpoints import checkpoint_problem
    from align.config import load_config
    from align.errors import UsageError
    from align.verl import train

    base = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--output_dir", str(tmp_path / "run"),
            "--report_to", "none", "--learning_rate", "1e-3", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip
    states = []
    whole = train(load_config("recipes/tiny/grpo.yaml", base), workers=2,
                  on_step=lambda entry, state: states.append(state))  # fmt: skip
    for n in (1, 2):
        folder = tmp_path / "run" / f"checkpoint-{n}"
        assert checkpoint_problem(str(folder), verify_content=True) is None
        saved = load_model(str(folder), dtype="float32").state_dict()
        assert all(torch.equal(saved[k], states[n - 1][k]) for k in saved)
    shutil.rmtree(tmp_path / "run" / "checkpoint-2")
    resumed_states = []
    resumed = train(load_config("recipes/tiny/grpo.yaml", base + ["--resume_from_checkpoint", "true"]), workers=2,
                    on_step=lambda entry, state: resumed_states.append(state))  # fmt: skip
    assert [h["step"] for h in resumed] == [2]
    assert [(h["loss"], h["reward"]) for h in resumed] == [(h["loss"], h["reward"]) for h in whole[1:]]
    assert all(torch.equal(resumed_states[0][k], states[1][k]) for k in states[1])
    changed = base + ["--resume_from_checkpoint", "true", "--learning_rate", "2e-3"]
    with pytest.raises(UsageError, match="learning_rate 0.001 -> 0.002"):
        train(load_config("recipes/tiny/grpo.yaml", changed), workers=2)


def test_the_loop_refuses_a_run_the_cluster_cannot_place(workers, tmp_path):
    from align.config import load_config
    from align.verl import train

    config = load_config("recipes/tiny/grpo.yaml", ["--max_steps", "1", "--output_dir", str(tmp_path),
                                                    "--report_to", "none", "--per_device_train_batch_size", "8"])  # fmt: skip
    # more workers than the cluster has CPUs at all: refused whatever earlier tests' actors still hold (the free
    # count read here once raced their release: it grew before train() read it)
    total = int(ray.cluster_resources()["CPU"])
    with pytest.raises(ValueError, match=rf"the Ray cluster has \d+ free CPUs, this run needs {total + 1} "):
        train(config, workers=total + 1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the reason below is a CPU host's")
def test_why_verls_own_ppo_entry_cannot_run_here():
    """verl 0.9.1's PPO entry (``python -m verl.trainer.main_ppo``) builds its actor from EngineRegistry's
    language-model engines: fsdp / fsdp2 / fsdp_turbo register for cuda and npu only (megatron, torchtitan,
    veomni and automodel need packages and CUDA besides). On a CPU-only host verl's platform falls back to
    'nvidia', so the FSDP engine is picked and its first device call fails. If this starts to pass a CPU
    engine, the example launch of main_ppo belongs in this file. align.verl.train is the CPU-tested loop."""
    import warnings

    from verl.utils.device import get_device_id, get_device_name

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import verl.workers.engine  # noqa: F401  (registers the engines importable here)
        from verl.workers.engine.base import EngineRegistry

    devices = {
        backend: sorted(by_device) for backend, by_device in EngineRegistry._engines["language_model"].items()
    }
    assert devices and all("cpu" not in d for d in devices.values()), devices
    assert get_device_name() == "cuda"  # the fallback
    with pytest.raises(AssertionError, match="Torch not compiled with CUDA enabled"):
        get_device_id()


def test_python_m_align_verl_answers_help_without_torch_and_saves_the_trained_policy(tmp_path):
    """``python -m align.verl --help`` lists its options without importing torch, Ray or verl; ``save_final``
    writes the trained weights where align eval loads them (renamed into place: an older one is replaced)."""
    from align.config import load_config
    from align.verl import save_final

    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "align.verl", "--help"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--config" in out.stdout and "--workers" in out.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not {"torch", "ray", "verl"} & imported
    config = load_config("recipes/tiny/grpo.yaml", ["--output_dir", str(tmp_path), "--report_to", "none"])
    state = {k: v + 1.0 for k, v in load_model(MODEL, dtype="float32").state_dict().items()}
    for _ in range(2):  # the second replaces the first
        final = save_final(config, state, [{"step": 1}])
    saved = load_model(final, dtype="float32").state_dict()
    assert (
        all(torch.equal(saved[k], state[k]) for k in state) and load_tokenizer(final).mask_token == "<|mask|>"
    )
    assert sorted(os.listdir(tmp_path)) == ["final"] and json.load(
        open(os.path.join(final, "history.json"))
    ) == [{"step": 1}]
