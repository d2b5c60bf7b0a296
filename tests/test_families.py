"""The conformance checks every model family in ``align.models.family`` passes (a new family adds its tiny
config to ``TINY`` and must pass all of them): built from a config file, logits aligned and windowed,
padding ignored, the KV-cache forward equal to the full forward, LoRA names that exist with the shapes the
planner counts, and the planner's parameter count equal to the model's."""

import json
import types

import pytest
import torch

from align.models.family import FAMILIES, family_for, family_spec, model_logits, new_model
from align.plan import ModelShape, trainable_params
from align.runner import add_lora

# one tiny config per registered model_type (a new family adds its own here)
TINY = {
    "llada": {
        "model_type": "llada", "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "n_layers": 2, "mlp_hidden_size": 64,
        "vocab_size": 40, "embedding_size": 40, "max_sequence_length": 64, "mask_token_id": 39, "eos_token_id": 1,
        "pad_token_id": 1, "weight_tying": False,
    },
    "dream": {
        "model_type": "Dream", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 40, "max_position_embeddings": 64,
        "mask_token_id": 39, "eos_token_id": 1, "pad_token_id": 1, "bos_token_id": 1, "tie_word_embeddings": False,
    },
    "sdar": {  # head_dim explicit and unequal to hidden / heads, as on SDAR-4B
        "model_type": "sdar", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 40, "max_position_embeddings": 64,
        "mask_token_id": 39, "eos_token_id": 1, "pad_token_id": 1, "bos_token_id": 1, "tie_word_embeddings": False,
    },
}  # fmt: skip


def test_every_registered_family_has_a_conformance_config():
    assert sorted(FAMILIES) == sorted(TINY)


def _model(model_type, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY[model_type]))
    torch.manual_seed(0)
    return new_model(str(path)).eval()


@pytest.fixture(params=sorted(TINY))
def built(request, tmp_path):
    model = _model(request.param, tmp_path)
    return family_for(request.param), model


def test_built_from_its_config_file_and_found_by_its_model_type(built):
    family, model = built
    model_type = model.config.model_type
    assert model_type.lower() in family.model_types and family_for(model_type) is family


def test_logits_predict_their_own_position_windowed_and_padding_ignored(built):
    family, model = built
    vocab = model.config.vocab_size
    ids = torch.randint(2, vocab - 2, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = model(input_ids=ids).logits
        full = model_logits(model, ids, None, family_spec(model)).logits
        expected = torch.cat([raw[:, :1], raw[:, :-1]], 1) if family.shift_logits else raw
        torch.testing.assert_close(full, expected)
        window = model_logits(model, ids, None, family_spec(model), logits_range=(4, 9)).logits
        torch.testing.assert_close(window, full[:, 4:9], rtol=1e-5, atol=1e-5)
        padded = torch.cat([torch.full((2, 3), 1), ids], 1)
        attn = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones_like(ids)], 1)
        left = model_logits(model, padded, attn, family_spec(model)).logits[:, 3:]
        # a shifted family's first real logit is read from the last pad position: compare from the second
        skip = 1 if family.shift_logits else 0
        torch.testing.assert_close(left[:, skip:], full[:, skip:], rtol=1e-4, atol=1e-4)


def test_the_cache_forward_equals_the_full_forward_on_the_same_canvas(built):
    family, model = built
    if not family.supports_cache:
        with pytest.raises(ValueError, match="no KV-cache forward"):
            family.cached_forward(model, None, None, None, 0, (0, 1))
        return
    ids = torch.randint(2, model.config.vocab_size - 2, (2, 16), generator=torch.Generator().manual_seed(2))
    start, end = 8, 12
    with torch.no_grad():
        out = model_logits(model, ids, None, family_spec(model), use_cache=True)
        prefix = [(k[:, :, :start], v[:, :, :start]) for k, v in out.kv_cache]
        cached = family.cached_forward(model, ids[:, start:], None, prefix, start, (0, end - start)).logits
        dual = family.cached_forward(
            model, ids[:, start:end], None, out.kv_cache, start, (0, end - start)
        ).logits
    torch.testing.assert_close(cached, out.logits[:, start:end], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dual, out.logits[:, start:end], rtol=1e-4, atol=1e-4)


def test_lora_names_exist_and_count_as_the_planner_counts(built):
    family, model = built
    shape = ModelShape.from_config(model.config)
    assert shape.params == sum(p.numel() for p in model.parameters())
    args = types.SimpleNamespace(
        use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, lora_target_modules=None
    )
    lora = add_lora(model, args)
    trained = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trained == trainable_params(shape, args) > 0
    wrapped = {name.rsplit(".", 1)[-1] for name, m in lora.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(family.lora_targets)
