"""Suite-wide settings: one kernel thread per process, Ctrl-C that stops the suite whatever the code under test
does with SIGINT, and an optional collection order (``ALIGN_TEST_ORDER=reverse`` or ``random:SEED``) for
checking that no test depends on what ran before it."""

import os
import random
import signal

# Tiny models gain nothing from a second kernel thread, and on a busy 2-core machine torch's default (one thread
# per core) is several times slower than one; subprocesses (align, accelerate launch) inherit the setting.
THREADS = int(os.environ.get("ALIGN_TEST_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

import pytest  # noqa: E402
import torch  # noqa: E402

from align.models import LLaDAConfig, LLaDAModelLM  # noqa: E402

torch.set_num_threads(THREADS)

# Training and evaluation turn SIGINT into "finish the step, save, stop", so a Ctrl-C would only fail the
# running test. Every SIGINT handler installed during the suite is wrapped: it records the signal, then does
# what its code asked; after the test, a recorded Ctrl-C stops pytest.
_interrupted: list[int] = []
_install_handler = signal.signal


def _watched_signal(signum, handler):
    own = handler is signal.default_int_handler or getattr(
        handler, "suite_watched", False
    )  # raises / wrapped
    if signum == signal.SIGINT and callable(handler) and not own:
        inner = handler

        def handler(sig, frame):
            _interrupted.append(sig)
            return inner(sig, frame)

        handler.suite_watched = True
    return _install_handler(signum, handler)


signal.signal = _watched_signal


@pytest.fixture
def sends_sigint():
    """For a test that signals its own process on purpose: its SIGINT is not a Ctrl-C."""
    yield
    _interrupted.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    result = yield
    if _interrupted:
        raise KeyboardInterrupt(f"Ctrl-C during {item.nodeid}")
    return result


def pytest_collection_modifyitems(session, config, items):
    order = os.environ.get("ALIGN_TEST_ORDER", "")
    if order == "reverse":
        items.reverse()
    elif order.startswith("random:"):
        random.Random(int(order.split(":", 1)[1])).shuffle(items)
    elif order:
        raise pytest.UsageError(f"ALIGN_TEST_ORDER={order!r}: expected 'reverse' or 'random:SEED'.")


VOCAB = 40
MASK_ID = 39
EOS_ID = 1
BOS_ID = 0


def tiny_config(**overrides) -> LLaDAConfig:
    fields = dict(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=64,
        vocab_size=VOCAB,
        max_sequence_length=256,
        mask_token_id=MASK_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        bos_token_id=BOS_ID,
    )
    fields.update(overrides)
    return LLaDAConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> LLaDAModelLM:
    torch.manual_seed(seed)
    model = LLaDAModelLM(tiny_config(**overrides)).eval()
    # Random init gives near-uniform logits; sharpen them so argmax/top-k are not decided by float noise.
    with torch.no_grad():
        model.model.transformer.ff_out.weight.mul_(20.0)
    return model


@pytest.fixture
def model():
    return tiny_model()


def assert_same_training(joint, chunked, tol: float = 1e-6) -> None:
    """Train both trainers from the same weights (LoRA initialisation included) and require the same
    trainable parameters afterwards (with plain SGD any gradient difference shows) and the same losses."""
    chunked.model.load_state_dict(joint.model.state_dict())
    before = {n: p.detach().clone() for n, p in joint.model.named_parameters() if p.requires_grad}
    joint.train()
    chunked.train()
    a, b = dict(joint.model.named_parameters()), dict(chunked.model.named_parameters())
    assert any(not torch.equal(a[n], before[n]) for n in before)
    worst = max((a[n] - b[n]).abs().max().item() for n in before)
    assert worst < tol, worst
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (joint, chunked)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-6)


def kw_generate(model, input_ids, attention_mask=None, *, spec=None, mask_token_id=None, generator=None,
                on_block=None, **fields):  # fmt: skip
    """``align.sampling.generate`` with its settings and hooks given as keywords (the tests' shorthand): the
    SamplerHooks fields go to ``hooks``, the rest to ``SamplerSettings``."""
    from align.models.family import family_spec
    from align.sampling import SamplerSettings, generate
    from align.sampling.hooks import SamplerHooks

    hook_fields = {k: fields.pop(k) for k in SamplerHooks.names() if k in fields}
    if spec is None and mask_token_id is not None:
        spec = family_spec(model, mask_token_id=mask_token_id)
    return generate(model, input_ids, attention_mask, SamplerSettings(**fields), spec=spec, generator=generator,
                    hooks=SamplerHooks.of(**hook_fields), on_block=on_block)  # fmt: skip
