import dataclasses
import json

import pytest
import torch
from conftest import EOS_ID, MASK_ID, VOCAB, tiny_config, tiny_model
from transformers import AutoConfig, AutoModel

from align.models import LLaDAConfig, LLaDAModelLM, family_spec

# The official GSAI-ML/LLaDA-8B-Instruct config.json, shrunk (same fields, OLMo naming).
OFFICIAL_CONFIG = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 32,
    "embedding_dropout": 0.0, "embedding_size": 40, "eos_token_id": 1, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 39, "max_sequence_length": 4096, "mlp_hidden_size": 64,
    "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None, "n_heads": 4, "n_kv_heads": 4,
    "n_layers": 2, "pad_token_id": 1, "precision": "amp_bf16", "residual_dropout": 0.0, "rms_norm_eps": 1e-05,
    "rope": True, "rope_full_precision": True, "rope_theta": 500000.0, "scale_logits": False,
    "transformers_version": "4.46.3", "use_cache": False, "vocab_size": 40, "weight_tying": False,
}  # fmt: skip


def official_names(n_layers: int, tied: bool) -> set[str]:
    per_block = [
        "attn_norm",
        "ff_norm",
        "q_proj",
        "k_proj",
        "v_proj",
        "attn_out",
        "ff_proj",
        "up_proj",
        "ff_out",
    ]
    names = {f"model.transformer.blocks.{i}.{p}.weight" for i in range(n_layers) for p in per_block}
    names |= {"model.transformer.wte.weight", "model.transformer.ln_f.weight"}
    if not tied:
        names.add("model.transformer.ff_out.weight")
    return names


@pytest.mark.parametrize("tied", [False, True])
def test_parameter_names_match_official_checkpoints(tied):
    model = LLaDAModelLM(tiny_config(weight_tying=tied))
    assert set(model.state_dict()) == official_names(2, tied)


def test_official_config_json_loads_unchanged(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, LLaDAConfig)
    assert (config.d_model, config.n_kv_heads, config.mask_token_id, config.rope_theta) == (
        32,
        4,
        39,
        500000.0,
    )
    model = LLaDAModelLM(config)
    model.save_pretrained(tmp_path / "ckpt")
    reloaded = AutoModel.from_pretrained(tmp_path / "ckpt")
    assert isinstance(reloaded, LLaDAModelLM)
    x = torch.randint(2, 38, (2, 9))
    torch.testing.assert_close(reloaded(x).logits, model(x).logits, rtol=0, atol=0)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["init_fn"] == "mitchell"


def test_unsupported_architecture_fields_are_rejected():
    with pytest.raises(ValueError, match="alibi"):
        LLaDAConfig(alibi=True)
    with pytest.raises(ValueError, match="pad_token_id equals mask_token_id"):
        LLaDAConfig(mask_token_id=5, pad_token_id=5)


def test_logits_shape_and_bidirectional_attention(model):
    x = torch.randint(2, 38, (2, 8))
    logits = model(x).logits
    assert logits.shape == (2, 8, VOCAB)
    y = x.clone()
    y[:, -1] = MASK_ID  # changing the LAST token must change the FIRST position's logits (no causal mask)
    assert (model(y).logits[:, 0] - logits[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("tied", [False, True])
def test_left_padding_does_not_change_real_token_logits(tied):
    model = tiny_model(weight_tying=tied) if not tied else LLaDAModelLM(tiny_config(weight_tying=True)).eval()
    x = torch.randint(2, 38, (1, 10))
    ref = model(x).logits
    for pad in (1, 5):
        ids = torch.cat([torch.full((1, pad), EOS_ID), x], 1)
        mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 10, dtype=torch.long)], 1)
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[:, pad:], ref, rtol=1e-5, atol=1e-5)
    # without the mask, pads are attended to and the logits do change
    ids = torch.cat([torch.full((1, 5), EOS_ID), x], 1)
    assert (model(ids).logits[:, 5:] - ref).abs().max() > 1e-4


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa = tiny_model(n_kv_heads=2)
    mha = LLaDAModelLM(tiny_config(n_kv_heads=4)).eval()
    sd = gqa.state_dict()
    hd = 32 // 4
    for key, value in sd.items():
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # [2*hd, d] -> each kv head serves 2 q heads
            sd[key] = value.view(2, hd, -1).repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    x = torch.randint(2, 38, (2, 7))
    torch.testing.assert_close(mha(x).logits, gqa(x).logits, rtol=1e-5, atol=1e-5)


def test_kv_cache_segments_reproduce_the_full_forward(model):
    x = torch.randint(2, 38, (2, 12))
    mask = torch.ones_like(x)
    mask[0, :3] = 0
    full = model(x, attention_mask=mask, use_cache=True)
    prefix = [(k[:, :, :6], v[:, :, :6]) for k, v in full.kv_cache]
    suffix = model(x[:, 6:], attention_mask=mask, kv_cache=prefix, cache_start=6).logits
    torch.testing.assert_close(suffix, full.logits[:, 6:], rtol=1e-5, atol=1e-5)
    middle = model(x[:, 4:8], attention_mask=mask, kv_cache=full.kv_cache, cache_start=4).logits
    torch.testing.assert_close(middle, full.logits[:, 4:8], rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_gives_same_gradients():
    x = torch.randint(2, 38, (2, 8))
    grads = []
    for checkpointing in (False, True):
        model = tiny_model()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(x).logits.logsumexp(-1).sum().backward()
        grads.append(model.model.transformer.blocks[0].q_proj.weight.grad.clone())
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1])


def test_bf16_forward_is_finite_and_close_to_fp32(model):
    x = torch.randint(2, 38, (2, 8))
    ref = model(x).logits
    out = model.to(torch.bfloat16)(x).logits
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()


def test_family_spec_reads_ids_from_config():
    spec = family_spec(tiny_config(mask_token_id=5, eos_token_id=7, pad_token_id=7, eot_token_id=8))
    assert (spec.mask_token_id, spec.eos_token_id, spec.eot_token_id, spec.shift_logits) == (5, 7, 8, False)
    assert spec.stop_token_ids == (7, 8)


def test_logits_range_equals_the_slice_of_full_logits():
    from peft import LoraConfig, get_peft_model

    from align.models import model_logits
    from align.models.family import _is_native

    model = tiny_model()
    ids = torch.randint(2, 38, (2, 12))
    attn = torch.ones_like(ids)
    attn[1, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=attn).logits
        part = model_logits(model, ids, attn, family_spec(model), logits_range=(5, 9)).logits
        torch.testing.assert_close(part, full[:, 5:9])
        # a shifted family (Dream): shift first, then slice, on any model
        shifted = dataclasses.replace(family_spec(model), model_type="dream")
        part = model_logits(model, ids, attn, shifted, logits_range=(5, 9)).logits
        torch.testing.assert_close(part, full[:, 4:8])
        # through a PEFT wrapper the native class is still found and the window applied
        lora = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["q_proj"]))
        calls = []
        lora.base_model.model.register_forward_hook(
            lambda m, a, kw, out: calls.append(out.logits.shape), with_kwargs=True
        )
        model_logits(lora, ids, attn, family_spec(model), logits_range=(5, 9))
        assert calls == [torch.Size([2, 4, VOCAB])]
        # and through a DDP-style wrapper (the model registered as .module)
        wrapper = torch.nn.Module()
        wrapper.module = lora
        assert _is_native(wrapper) and not _is_native(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("field,value", [
    ("bias_for_layer_norm", True), ("scale_logits", True), ("input_emb_norm", True), ("attention_layer_norm", True),
    ("activation_type", "gelu"), ("activation_type", "swiglu"), ("block_type", "sequential"), ("block_group_size", 2),
])  # fmt: skip
def test_config_fields_that_change_the_computation_are_refused(field, value):
    with pytest.raises(ValueError, match=f"LLaDAConfig: {field}={value!r} means .* trust_remote_code"):
        LLaDAConfig(**{field: value})


def test_official_values_of_those_fields_load():
    official = dict(include_bias=False, bias_for_layer_norm=False, scale_logits=False, input_emb_norm=False,
                    attention_layer_norm=False, activation_type="silu", block_type="llama", block_group_size=1)  # fmt: skip
    assert LLaDAConfig(**official).block_group_size == 1
    with pytest.raises(ValueError, match="bias_for_layer_norm=True means biases in the RMS norms"):
        LLaDAConfig(include_bias=True)  # OLMo: bias_for_layer_norm None inherits include_bias
    assert LLaDAConfig(include_bias=True, bias_for_layer_norm=False).include_bias
