import pytest
import torch

from align.models import LLaDAConfig, LLaDAModelLM

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
