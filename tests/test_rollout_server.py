"""The dense-diffusion rollout server (align.rollout.server): in-process generation's tokens through its request
API and its batch engine, cross-request batching, step maps that replay to the trace estimator's passes, weight
updates in and back out, refusals; then the same server as a Ray actor (Ray started and stopped here)."""

import asyncio
import json
import time

import pytest
import torch

from align.logprob.estimators import trace_plan
from align.models import family_spec, load_model, load_tokenizer
from align.rollout.engine import InProcessEngine, build_engine
from align.rollout.server import DiffusionServer, ServerEngine
from align.sampling import SamplerSettings

MODEL = "recipes/tiny/model"
SETTINGS = SamplerSettings(gen_length=8, steps=8, block_length=8)


def _prompts(tok, n=8):
    rows = [json.loads(line) for line in open("recipes/tiny/data/test.jsonl")][:n]
    return [tok.encode(r["question"]) for r in rows]


def _batch(prompts, pad):
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, attn


@pytest.fixture(scope="module")
def served():
    model, tok = load_model(MODEL, dtype="float32").eval(), load_tokenizer(MODEL)
    server = DiffusionServer(model=load_model(MODEL, dtype="float32"), tokenizer=tok, settings=SETTINGS)
    return model, tok, family_spec(model, tok), server


def test_greedy_requests_and_the_batch_engine_give_in_process_tokens(served):
    model, tok, spec, server = served
    prompts = _prompts(tok)
    ids, attn = _batch(prompts, server.pad_id)
    local = InProcessEngine(spec, model=model).generate(ids, attn, SETTINGS)
    engine = build_engine("server", server=server, spec=spec)
    remote = engine.generate(ids, attn, SETTINGS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(remote.sequences, local.sequences) and torch.equal(
        remote.commit_step, local.commit_step
    )
    before = dict(server.stats)

    async def send_all():  # eight clients at once: one batch
        return await asyncio.gather(
            *(server.generate(p, {}, request_id=str(i)) for i, p in enumerate(prompts))
        )

    outputs = asyncio.run(send_all())
    assert server.stats["batches"] - before["batches"] == 1 and server.stats["rows"] - before["rows"] == 8
    for out, row in zip(outputs, local.completion_ids, strict=True):
        stop = (row == spec.eos_token_id).nonzero()
        end = int(stop[0]) + 1 if len(stop) else len(row)
        assert out.token_ids == row[:end].tolist() and out.extra_fields["canvas"] == row.tolist()
        assert out.stop_reason == ("completed" if len(stop) else "length")
    assert any(o.token_ids != outputs[0].token_ids for o in outputs)  # not one answer for all
    alone = [server.decode_batch([p])[0].token_ids for p in prompts]  # no batch-mates, no padding
    assert alone == [o.token_ids for o in outputs]


def test_sampled_group_differs_and_its_step_maps_replay_to_the_trace_passes(served):
    _, tok, spec, server = served
    prompt = _prompts(tok, 1)[0]
    seen = []
    hook = server.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["input_ids"] if "input_ids" in kw else a[0]).clone()),
        with_kwargs=True,
    )
    try:
        group = server.decode_batch([prompt] * 8, {"temperature": 1.0, "seed": 3})
    finally:
        hook.remove()
    canvases = {tuple(o.extra_fields["canvas"]) for o in group}
    assert len(canvases) > 1  # T = 1: the group is not one completion eight times
    canvas = torch.tensor([o.extra_fields["canvas"] for o in group])
    commit = torch.tensor([o.extra_fields["commit_step"] for o in group])
    assert sorted(commit[0].tolist()) == list(range(8))  # one token per step, every position committed once
    full = torch.cat([torch.tensor([prompt] * 8), canvas], 1)
    completion = torch.zeros_like(full, dtype=torch.bool)
    completion[:, len(prompt) :] = True
    plan = trace_plan(completion, 1, commit_step=torch.cat([torch.full((8, len(prompt)), -1), commit], 1),
                      num_steps=SETTINGS.steps)  # fmt: skip
    replayed = torch.where(plan.masked, spec.mask_token_id, full[None])
    assert len(seen) == SETTINGS.steps and torch.equal(
        torch.stack(seen), replayed
    )  # the sampler's own inputs
    again = server.decode_batch([prompt] * 8, {"temperature": 1.0, "seed": 3})
    assert [o.token_ids for o in again] == [o.token_ids for o in group]  # a seed makes a request reproducible


def test_pushed_weights_change_outputs_and_the_originals_restore_them(served):
    model, tok, spec, server = served
    prompts = _prompts(tok)
    original = {k: v.clone() for k, v in server.model.state_dict().items()}
    first = [o.token_ids for o in server.decode_batch(prompts)]
    engine = ServerEngine(server, spec=spec)
    perturbed = load_model(MODEL, dtype="float32")
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    version = server.version
    engine.sync_weights(perturbed)
    changed = server.decode_batch(prompts)
    assert server.version == version + 1 and changed[0].extra_fields["weights_version"] == version + 1
    assert [o.token_ids for o in changed] != first
    engine.sync_weights(model)  # the committed weights back
    assert all(torch.equal(server.model.state_dict()[k], v) for k, v in original.items())
    assert [o.token_ids for o in server.decode_batch(prompts)] == first


def test_bad_requests_and_updates_are_refused_in_one_line(served):
    _, tok, _, server = served
    prompt = _prompts(tok, 1)
    with pytest.raises(
        ValueError, match=r"sampling_params repetition_penalty 1.1 would change the distribution"
    ):
        server.decode_batch(prompt, {"repetition_penalty": 1.1})
    with pytest.raises(ValueError, match=r"sampling_params \['best_of'\] mean nothing"):
        server.decode_batch(prompt, {"best_of": 2})
    verls_defaults = {
        "repetition_penalty": 1.0,
        "top_p": 1.0,
        "top_k": -1,
        "temperature": 0.0,
        "logprobs": False,
    }
    assert [o.token_ids for o in server.decode_batch(prompt, verls_defaults)] == [
        o.token_ids for o in server.decode_batch(prompt, {"temperature": 0.0})
    ]  # verl's agent loop sends its "off" values with every request
    with pytest.raises(ValueError, match="max_tokens 4 is below the canvas"):
        server.decode_batch(prompt, {"max_tokens": 4})
    assert server.decode_batch(prompt, {"max_tokens": 64, "logprobs": 1})[0].log_probs is None
    before = {k: v.clone() for k, v in server.model.state_dict().items()}
    name = next(iter(before))
    with pytest.raises(ValueError, match="the served model has no tensor 'lm_head.weight'"):
        server.load_weights([(name, before[name] + 1), ("lm_head.weight", torch.zeros(1))])
    with pytest.raises(ValueError, match=f"update_weights: {name} has shape"):
        server.load_weights({name: torch.zeros(3)})
    assert all(torch.equal(server.model.state_dict()[k], v) for k, v in before.items())  # nothing copied

    async def failing():
        return await server.generate([], {})

    with pytest.raises(ValueError, match="non-empty prompt_ids"):
        asyncio.run(failing())


def test_batched_requests_beat_one_at_a_time(served):
    """16 requests sent together (one batch) against the same 16 sent one after another, in one run: the CPU
    time of this process, the better of two tries each."""
    _, tok, _, server = served
    prompts = _prompts(tok, 16)

    async def together():
        return await asyncio.gather(*(server.generate(p) for p in prompts))

    async def one_by_one():
        return [await server.generate(p) for p in prompts]

    asyncio.run(together())  # warm-up
    timings = {}
    for name, run in (("together", together), ("one_by_one", one_by_one)) * 2:  # CPU seconds of this process
        start, batches = (
            time.process_time(),
            server.stats["batches"],
        )  # (all its threads): other load adds none
        outputs = asyncio.run(run())
        spent = time.process_time() - start
        timings[name] = (
            min(spent, timings.get(name, (spent,))[0]),
            server.stats["batches"] - batches,
            outputs,
        )
    assert timings["together"][1] == 1 and timings["one_by_one"][1] == 16
    assert [o.token_ids for o in timings["together"][2]] == [o.token_ids for o in timings["one_by_one"][2]]
    assert timings["together"][0] < 0.5 * timings["one_by_one"][0], timings


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 writes an auth token otherwise
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"}})  # fmt: skip
    yield ray
    ray.shutdown()
    assert not ray.is_initialized()


def test_the_server_as_a_ray_actor_batches_requests_and_takes_weights(served, ray_cluster):
    from align.rollout.server import ray_server

    ray = ray_cluster
    model, tok, spec, _ = served
    actor = ray_server(MODEL, settings=SETTINGS.as_kwargs())
    prompts = _prompts(tok)
    ids, attn = _batch(prompts, spec.eos_token_id if spec.pad_token_id is None else spec.pad_token_id)
    local = InProcessEngine(spec, model=model).generate(ids, attn, SETTINGS)
    engine = ServerEngine(actor, spec=spec)
    assert engine.describe() == {"engine": "server", "remote": True}
    assert torch.equal(engine.generate(ids, attn, SETTINGS).sequences, local.sequences)
    before = ray.get(actor.get_stats.remote())
    outputs = ray.get([actor.generate.remote(p, {}, str(i)) for i, p in enumerate(prompts)])  # eight clients
    after = ray.get(actor.get_stats.remote())
    assert [o.extra_fields["canvas"] for o in outputs] == local.completion_ids.tolist()
    assert (
        after["rows"] - before["rows"] == 8 and after["batches"] - before["batches"] < 8
    )  # batched across requests
    perturbed = load_model(MODEL, dtype="float32")
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    engine.sync_weights(perturbed)
    assert not torch.equal(engine.generate(ids, attn, SETTINGS).sequences, local.sequences)
    engine.sync_weights(model)
    assert torch.equal(engine.generate(ids, attn, SETTINGS).sequences, local.sequences)
    assert ray.get(actor.get_stats.remote())["weights_version"] == 2
    ray.kill(actor)


def test_the_trainer_rolls_out_on_a_ray_server_as_it_does_in_process(ray_cluster, tmp_path):
    """rollout_engine ray_server: rollouts at T = 1 on a server actor of the trainer's own (the trainer's
    generator state travels with the batch), the policy pushed to it before each rollout phase, train the
    same parameters as in-process rollouts (2 steps)."""
    from align.config import load_config
    from align.train import build_trainer

    def run(name, *extra):
        argv = ["--model_name_or_path", MODEL, "--dataset_files", "recipes/tiny/data/train.jsonl",
                "--output_dir", str(tmp_path / name), "--use_chat_template", "false", "--max_completion_length", "8",
                "--block_length", "8", "--diffusion_steps", "8", "--num_generations", "4", "--temperature", "1",
                "--per_device_train_batch_size", "8", "--max_steps", "2", "--logging_steps", "1", "--dtype",
                "float32", "--reward_funcs", "math_accuracy", "--report_to", "none", "--save_strategy", "no",
                "--learning_rate", "1e-3", "--use_cpu", "true", "--seed", "3", "--max_prompt_length", "16", *extra]  # fmt: skip
        trainer = build_trainer(load_config(None, argv))
        trainer.train()
        return trainer

    local = run("local")
    served = run("served", "--rollout_engine", "ray_server")
    assert isinstance(served.engine, ServerEngine) and served.engine.remote
    assert (
        ray_cluster.get(served.engine.server.get_stats.remote())["weights_version"] == 2
    )  # one push per phase
    a, b = local.model.state_dict(), served.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert not all(
        torch.equal(a[k], load_model(MODEL, dtype="float32").state_dict()[k]) for k in a
    )  # it trained


def test_rollout_engine_ray_server_is_refused_with_lora(tmp_path):
    from align.config import load_config

    with pytest.raises(ValueError, match="rollout_engine ray_server pushes the whole state dict"):
        load_config(None, ["--model_name_or_path", MODEL, "--dataset_files", "recipes/tiny/data/train.jsonl",
                           "--output_dir", str(tmp_path), "--rollout_engine", "ray_server", "--use_peft", "true",
                           "--use_cpu", "true", "--reward_funcs", "math_accuracy"])  # fmt: skip


def test_the_verl_rollout_replica_launches_a_server_and_its_adapter_syncs_weights(served, ray_cluster):
    pytest.importorskip("verl")
    import types

    from verl.workers.config import RolloutConfig
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from align.verl import register_rollout

    _, tok, spec, server = served
    register_rollout()
    config = RolloutConfig(name="dllm_align", response_length=8, prompt_length=16, temperature=0.0,
                           tensor_model_parallel_size=1)  # fmt: skip
    replica = RolloutReplicaRegistry.get("dllm_align")(
        0, config, types.SimpleNamespace(local_path=MODEL, path=MODEL)
    )
    asyncio.run(replica.launch_servers())
    prompt = _prompts(tok, 1)[0]
    out = ray_cluster.get(replica.server_handle.generate.remote(prompt, {"temperature": 0.0}, "request-0"))
    assert out.token_ids == server.decode_batch([prompt])[0].token_ids and out.stop_reason == "completed"
    # verl's hybrid worker side: the BaseRollout adapter its registry names, pushing a weight sync by generator
    from verl.workers.rollout.base import get_rollout_class

    adapter_class = get_rollout_class("dllm_align", "async")
    perturbed = load_model(MODEL, dtype="float32")
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    drained = []

    def named():  # a generator, as verl's weight sync hands one to every rank
        for item in perturbed.state_dict().items():
            drained.append(item[0])
            yield item

    follower = adapter_class(config, types.SimpleNamespace(path=MODEL), None, replica_rank=0)
    follower.rollout_rank = 1  # a rank without the server: drains the generator, sends nothing
    assert asyncio.run(follower.update_weights(named())) is None and len(drained) == len(
        perturbed.state_dict()
    )
    leader = adapter_class(config, types.SimpleNamespace(path=MODEL), None)
    assert asyncio.run(leader.update_weights(named())) == 1
    with pytest.raises(ValueError, match="takes wire_format 'named_tensors', not 'delta_flush'"):
        asyncio.run(leader.update_weights(named(), wire_format="delta_flush"))
    after = ray_cluster.get(replica.server_handle.generate.remote(prompt, {"temperature": 0.0}, "request-1"))
    original = {k: v.clone() for k, v in server.model.state_dict().items()}
    server.load_weights(perturbed.state_dict())
    expected = server.decode_batch([prompt])[0].token_ids
    server.load_weights(original)
    assert after.token_ids == expected and after.extra_fields["weights_version"] == 1
    asyncio.run(leader.resume(["weights"])), asyncio.run(leader.release())  # resident: nothing to do
    ray_cluster.kill(replica.server_handle)


@pytest.mark.parametrize("path,settings", [
    ("recipes/tiny/model", dict(gen_length=8, steps=8, block_length=4, threshold=0.9, cache="dual")),
    ("recipes/tiny/model", dict(gen_length=16, steps=16, block_length=8, variable_length=True)),
    ("recipes/tiny-dream/model", dict(gen_length=8, steps=8, block_length=8, remasking="entropy")),
    ("recipes/tiny-sdar/model", dict(gen_length=8, steps=8, block_length=4, remasking="low_confidence_static")),
], ids=["llada-threshold-dual-cache", "llada-variable-length", "dream-entropy", "sdar-block"])  # fmt: skip
def test_other_families_and_modes_through_the_server_match_in_process(path, settings):
    """Every decoding mode reaches the server through its settings: fast LLaDA modes, variable length, Dream's
    schedules and SDAR's block sampler give the in-process tokens and step maps (greedy)."""
    model, tok = load_model(path, dtype="float32").eval(), load_tokenizer(path)
    spec = family_spec(model, tok)
    server = DiffusionServer(model=load_model(path, dtype="float32"), tokenizer=tok, settings=settings)
    prompts = _prompts(tok, 6)
    ids, attn = _batch(prompts, server.pad_id)
    local = InProcessEngine(spec, model=model).generate(ids, attn, SamplerSettings(**settings))
    remote = ServerEngine(server, spec=spec).generate(ids, attn, SamplerSettings(**settings))
    assert torch.equal(remote.sequences, local.sequences) and torch.equal(
        remote.commit_step, local.commit_step
    )


def test_cancelled_callers_strand_no_other_request(served):
    """40 requests sent together, 10 of them cancelled by their callers (5 before the batch starts, 5 while it
    decodes): the other 30 are answered, each with the tokens it gets alone."""
    _, tok, _, server = served
    prompts = (_prompts(tok, 8) * 5)[:40]

    async def scenario():
        tasks = [asyncio.create_task(server.generate(p)) for p in prompts]
        await asyncio.sleep(0)
        for t in tasks[:5]:
            t.cancel()
        await asyncio.sleep(0.05)  # the batch is decoding in its thread now
        for t in tasks[5:10]:
            t.cancel()
        return await asyncio.wait_for(asyncio.gather(*tasks[10:]), timeout=300)  # hang guard; ~2 s observed

    answered = asyncio.run(scenario())
    alone = [o.token_ids for o in server.decode_batch(prompts[10:])]
    assert len(answered) == 30 and [o.token_ids for o in answered] == alone


def test_a_malformed_request_is_refused_alone(served):
    """In a batch of good requests, an out-of-range id, an empty prompt, a non-integer id and an over-long
    prompt are each refused with their own line; the good ones are answered as if alone."""
    _, tok, _, server = served
    good = _prompts(tok, 3)
    vocab = server.model.get_input_embeddings().num_embeddings
    context = server.model.config.max_sequence_length
    bad = {
        "outside the vocabulary": [1, vocab + 7, 2],
        "non-empty prompt_ids": [],
        "outside the vocabulary 0": [1, 2.5],
        "exceeds the model's context": [1] * context,
    }

    async def scenario():
        calls = [server.generate(p) for p in good] + [server.generate(p) for p in bad.values()]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(scenario())
    assert [o.token_ids for o in results[:3]] == [o.token_ids for o in server.decode_batch(good)]
    for (message, _), error in zip(bad.items(), results[3:], strict=True):
        assert isinstance(error, ValueError) and message in str(error), error


def test_verls_result_type_and_its_weight_sync_lifecycle(served):
    """Results are verl's own TokenOutput (every field its agent loop reads: num_preempted 0). abort_all_requests
    answers the queued requests "aborted" with no tokens and holds new ones until resume_generation, which
    then decode as if alone; with reject_request they are refused in one line; the cache and profile calls
    are explicit no-ops."""
    from verl.workers.rollout.replica import TokenOutput

    _, tok, _, server = served
    prompts = _prompts(tok, 6)
    alone = [o.token_ids for o in server.decode_batch(prompts[3:])]

    async def scenario():
        queued = [asyncio.create_task(server.generate(p)) for p in prompts[:3]]
        await asyncio.sleep(0)  # in the queue, not yet in a batch
        assert await server.abort_all_requests() == 3
        held = [asyncio.create_task(server.generate(p)) for p in prompts[3:]]
        await asyncio.sleep(0.05)
        assert not any(t.done() for t in held)  # waiting for the weight sync to end
        for call in (server.clear_kv_cache(), server.release_kv_cache(), server.resume_kv_cache(),
                     server.start_profile(), server.stop_profile()):  # fmt: skip
            assert await call is None
        await server.resume_generation()
        answered = await asyncio.wait_for(asyncio.gather(*held), timeout=300)  # hang guard; ~1 s observed
        await server.abort_all_requests(reject_request=True)
        with pytest.raises(RuntimeError, match="paused .* retry later"):
            await server.generate(prompts[0])
        await server.resume_generation()
        return [await t for t in queued], answered

    aborted, answered = asyncio.run(scenario())
    assert all(isinstance(o, TokenOutput) and o.num_preempted == 0 for o in aborted + answered)
    assert [(o.token_ids, o.stop_reason) for o in aborted] == [([], "aborted")] * 3
    assert [o.token_ids for o in answered] == alone


def test_the_server_and_verls_worker_put_the_model_on_the_gpu_ray_gave_them(monkeypatch):
    """Under a faked GPU assignment (Ray sets an actor's CUDA_VISIBLE_DEVICES; torch then sees CUDA) the server
    and verl's worker choose CUDA, on a CPU-only host the CPU, and an explicit device stands; a worker whose
    backend contradicts its device (NCCL on CPU) is one line."""
    import inspect

    from align.machine import actor_device
    from align.verl import DiffusionPolicyWorker

    assert inspect.signature(DiffusionServer).parameters["device"].default is None  # the actor's own device
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert actor_device() == "cuda" and actor_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert actor_device() == "cpu"
    worker = DiffusionPolicyWorker.__new__(
        DiffusionPolicyWorker
    )  # verl's Worker base needs Ray's env to init
    worker.backend, worker.model_path, worker.dtype = "nccl", MODEL, "float32"
    with pytest.raises(RuntimeError, match="worker on cpu with backend nccl: NCCL needs the model on CUDA"):
        worker.init_model()


def test_a_seeded_request_gets_its_own_tokens_whatever_is_queued_with_it(served):
    """Sampled (T = 1) requests with seeds, sent together with unseeded ones: each seeded request's tokens are
    the ones it gets sent alone; two with the same seed and prompt agree."""
    _, tok, _, server = served
    prompts = _prompts(tok, 4)
    sampled = {"temperature": 1.0}
    seeded = [(p, {**sampled, "seed": 11 + i % 2}) for i, p in enumerate(prompts)] + [
        (prompts[0], {**sampled, "seed": 11})
    ]

    async def together():
        calls = [server.generate(p, sampled) for p in prompts] + [server.generate(p, sp) for p, sp in seeded]
        return await asyncio.wait_for(asyncio.gather(*calls), timeout=300)  # hang guard; ~1 s observed

    got = [o.token_ids for o in asyncio.run(together())[len(prompts) :]]

    async def alone(p, sp):
        return (await server.generate(p, sp)).token_ids

    assert got == [asyncio.run(alone(p, sp)) for p, sp in seeded]
    assert got[0] == got[-1]


def test_a_weight_update_applies_between_batches_in_arrival_order(served):
    """Requests sent before an update are decoded with the old weights, those sent after with the new, however
    the sends interleave with the batch loop; each result names its weights version."""
    model, tok, _, server = served
    prompts = _prompts(tok, 6)
    perturbed = load_model(MODEL, dtype="float32")
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    old_state, new_state = dict(model.state_dict()), dict(perturbed.state_dict())
    server.load_weights(old_state)
    before = [o.token_ids for o in server.decode_batch(prompts[:3])]
    old_version = server.version

    async def interleaved():
        first = [asyncio.create_task(server.generate(p)) for p in prompts[:3]]
        update = asyncio.create_task(server.update_weights(new_state))
        second = [asyncio.create_task(server.generate(p)) for p in prompts[3:]]
        return await asyncio.wait_for(asyncio.gather(*first, update, *second), timeout=300)  # hang guard

    (*results,) = asyncio.run(interleaved())
    old, version, new = results[:3], results[3], results[4:]
    assert version == old_version + 1
    assert [o.token_ids for o in old] == before
    assert {o.extra_fields["weights_version"] for o in old} == {old_version}
    assert {o.extra_fields["weights_version"] for o in new} == {version}
    after = [o.token_ids for o in server.decode_batch(prompts[3:])]  # the new weights, alone
    assert [o.token_ids for o in new] == after
    server.load_weights(old_state)  # the module's server back on the committed weights
