"""MirasForCausalLM / MirasModel are the native MirasLM behind transformers' interfaces: same logits and loss, a
generate() whose cached decoding equals recomputing the whole sequence, constant-size caches for memory layers, clear
errors for what a recurrent memory cannot do, and save / load through the Auto classes."""

import dataclasses
import json

import pytest

pytest.importorskip("transformers", reason="needs the hf extra: pip install 'miras[hf]'")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, DynamicCache  # noqa: E402

import miras.hf.auto  # noqa: E402, F401  (registers model_type "miras" with the Auto classes)
from miras import presets  # noqa: E402
from miras.config import ModelConfig  # noqa: E402
from miras.hf import MirasConfig, MirasForCausalLM, MirasHFCache, MirasModel  # noqa: E402
from tests.hf.tiny import FAMILIES, model_config, native_model  # noqa: E402

PROMPT = torch.tensor([[5, 9, 2, 33, 17, 8, 40], [1, 60, 12, 12, 7, 3, 19]])  # [2, 7]: 7 is not a multiple of 4


def hf_pair(family: str = "moneta", **changes) -> tuple[MirasForCausalLM, torch.nn.Module]:
    """(HF model, an independent native MirasLM) holding the same weights."""
    native = native_model(model_config(family, **changes))
    model = MirasForCausalLM(MirasConfig.from_model_config(native.config, eos_token_id=0, pad_token_id=0))
    model.lm.load_state_dict(native.state_dict())
    return model.eval(), native


def argmax_without_cache(native, ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding by recomputing the whole sequence for every token (no cache anywhere)."""
    for _ in range(new_tokens):
        ids = torch.cat([ids, native(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_and_loss_equal_the_native_model(family):
    model, native = hf_pair(family)
    assert set(model.state_dict()) == {f"model.lm.{k}" for k in native.state_dict()}
    labels = PROMPT.clone()
    labels[0, :3] = -100
    with torch.no_grad():
        out, ref = model(PROMPT, labels=labels), native(PROMPT, labels=labels)
        hidden = AutoModel.from_config(model.config).eval()
        hidden.load_state_dict(model.model.state_dict())
        last = hidden(PROMPT).last_hidden_state
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=0)
    torch.testing.assert_close(native.lm_head(last), ref.logits, rtol=1e-6, atol=1e-6)
    assert out.past_key_values is None  # plain forwards build no cache unless asked


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_equals_argmax_without_cache(family):
    # The two paths differ by rounding (~1e-7 here) and the top two logits of these models by > 0.2 at every step,
    # so float32 cannot flip an argmax.
    model, native = hf_pair(family)
    with torch.no_grad():
        out = model.generate(PROMPT, max_new_tokens=9, do_sample=False, return_dict_in_generate=True)
        expected = argmax_without_cache(native, PROMPT, 9)
    assert torch.equal(out.sequences, expected)
    assert isinstance(out.past_key_values, MirasHFCache)
    assert out.past_key_values.get_seq_length() == PROMPT.shape[1] + 9 - 1  # the last token is never fed back


def cache_numel(cache: MirasHFCache) -> int:
    tensors = []
    MirasHFCache(cache.state)._map(lambda t: tensors.append(t) or t)
    return sum(t.numel() for t in tensors)


@pytest.mark.parametrize("family, constant", [("moneta", True), ("yaad-hybrid-swa", True), ("transformer", False)])
def test_cache_size_is_constant_for_memory_and_window_layers(family, constant):
    model, _ = hf_pair(family)
    sizes = []
    for new_tokens in (3, 12):
        out = model.generate(PROMPT, max_new_tokens=new_tokens, do_sample=False, return_dict_in_generate=True)
        sizes.append(cache_numel(out.past_key_values))
    assert (sizes[0] == sizes[1]) == constant


def test_sampling_and_several_sequences_per_prompt():
    model, native = hf_pair("yaad-hybrid-swa")
    torch.manual_seed(0)
    sampled = model.generate(PROMPT, max_new_tokens=6, do_sample=True, num_return_sequences=3)
    assert sampled.shape == (6, PROMPT.shape[1] + 6)
    assert torch.equal(sampled[:, : PROMPT.shape[1]], PROMPT.repeat_interleave(3, dim=0))
    # top_k=1 sampling can only pick the argmax: the sampling path decodes from the same cache as greedy.
    top1 = model.generate(PROMPT, max_new_tokens=6, do_sample=True, top_k=1)
    assert torch.equal(top1, argmax_without_cache(native, PROMPT, 6))


def test_decoding_continues_from_a_cache_and_the_cache_batch_operations():
    model, native = hf_pair("yaad-hybrid-swa")
    full = torch.cat([PROMPT, torch.tensor([[4], [6]])], dim=1)
    with torch.no_grad():
        cache = model(PROMPT, use_cache=True).past_key_values
        assert cache.get_seq_length() == PROMPT.shape[1] and cache.batch_size == 2
        last = model(full[:, -1:], past_key_values=cache).logits[:, -1]
        torch.testing.assert_close(last, native(full).logits[:, -1])
        # Rows of a cache: select one, or repeat each.
        single = model(PROMPT[1:], use_cache=True).past_key_values
        both = model(PROMPT, use_cache=True).past_key_values
        both.batch_select_indices(torch.tensor([1]))
        step = torch.tensor([[6]])
        torch.testing.assert_close(model(step, past_key_values=both).logits, model(step, past_key_values=single).logits)
        twice = model(PROMPT[1:], use_cache=True).past_key_values
        twice.batch_repeat_interleave(2)
        assert twice.batch_size == 2
        rows = model(torch.tensor([[6], [6]]), past_key_values=twice).logits
        torch.testing.assert_close(rows[0], rows[1])


@pytest.mark.parametrize(
    "kwargs, mode",
    [
        (dict(num_beams=2), "beam_search"),
        (dict(num_beams=2, do_sample=True), "beam_sample"),
        (dict(penalty_alpha=0.6, top_k=4), "contrastive_search"),
        (dict(prompt_lookup_num_tokens=2), "assisted_generation"),
        (dict(dola_layers="low"), "dola_generation"),
    ],
)
def test_generation_modes_that_rewind_the_past_raise(kwargs, mode):
    model, _ = hf_pair()
    with pytest.raises(ValueError, match=f"greedy decoding and sampling only.*'{mode}'"):
        model.generate(PROMPT, max_new_tokens=3, **kwargs)


def test_other_caches_and_padding_are_refused_clearly():
    model, _ = hf_pair()
    with pytest.raises(ValueError, match="cache_implementation='static' is not supported"):
        model.generate(PROMPT, max_new_tokens=2, cache_implementation="static")
    with pytest.raises(ValueError, match="must be a MirasHFCache.*DynamicCache"):
        model(PROMPT, past_key_values=DynamicCache())
    left = torch.ones_like(PROMPT)
    left[0, :2] = 0
    with pytest.raises(ValueError, match="padding .* while a cache is in use"):
        model.generate(PROMPT, attention_mask=left, max_new_tokens=2)
    with pytest.raises(ValueError, match="left or inner padding"):
        model(PROMPT, attention_mask=left)
    with pytest.raises(ValueError, match="the cache holds 2 sequences, input_ids has 1"):
        model(PROMPT[:1], past_key_values=model(PROMPT, use_cache=True).past_key_values)
    with pytest.raises(ValueError, match=r"input_ids must be a \[batch, tokens\] tensor"):
        model(PROMPT[0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"output_hidden_states": True}, "output_hidden_states is not supported"),
        ({"output_attentions": True}, "output_attentions is not supported"),
        ({"inputs_embeds": torch.zeros(2, 7, 32)}, "inputs_embeds is not supported"),
    ],
)
def test_unsupported_forward_arguments_are_named(kwargs, message):
    model, _ = hf_pair()
    for module in (model, model.model):
        with pytest.raises(ValueError, match=message):
            module(PROMPT, **kwargs)
    with pytest.raises(ValueError, match=message):
        model.generate(PROMPT, max_new_tokens=2, **kwargs)


def test_right_padding_without_a_cache_keeps_the_real_tokens_exact():
    model, native = hf_pair()
    right = torch.ones_like(PROMPT)
    right[1, 4:] = 0
    with torch.no_grad():
        logits = model(PROMPT, attention_mask=right).logits
        torch.testing.assert_close(logits[1, :4], native(PROMPT[1:, :4]).logits[0])


@pytest.mark.parametrize("tied", [True, False])
def test_save_and_load_through_the_auto_classes(tmp_path, tied):
    model, _ = hf_pair("yaad-hybrid-swa", tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert ("model.lm.lm_head.weight" in saved) == (not tied)  # a tied head is stored once, as the embedding
    assert type(AutoConfig.from_pretrained(tmp_path)) is MirasConfig
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert type(loaded) is MirasForCausalLM
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert (loaded.lm.lm_head.weight is loaded.lm.embed_tokens.weight) == tied
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(PROMPT).logits, model(PROMPT).logits, rtol=0, atol=0)
        base = AutoModel.from_pretrained(tmp_path).eval()
        assert type(base) is MirasModel
        torch.testing.assert_close(base(PROMPT).last_hidden_state, model.model(PROMPT).last_hidden_state)


@pytest.mark.parametrize("tied", [True, False])
def test_resize_token_embeddings(tmp_path, tied):
    """Adding tokens (a pad token, special tokens): the old rows and logits stay, the head follows (tied or not), the
    configs agree on the size and the resized model saves and loads."""
    model, native = hf_pair(tie_word_embeddings=tied)
    old = model.config.vocab_size
    model.resize_token_embeddings(old + 5)
    assert model.config.vocab_size == model.lm.config.vocab_size == old + 5
    assert model.lm.embed_tokens.weight.shape[0] == model.lm.lm_head.weight.shape[0] == old + 5
    assert (model.lm.lm_head.weight is model.lm.embed_tokens.weight) == tied
    with torch.no_grad():
        logits = model(PROMPT).logits
        torch.testing.assert_close(logits[..., :old], native(PROMPT).logits)
        model.save_pretrained(tmp_path)
        loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(loaded(PROMPT).logits, logits, rtol=0, atol=0)


def test_a_checkpoint_missing_weights_is_refused(tmp_path):
    model, _ = hf_pair()
    model.save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.lm.layers.0.mixer.memory_init.0"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 weight\(s\).*memory_init.0"):
        MirasForCausalLM.from_pretrained(tmp_path)


def test_loading_with_overrides_resolves_again(tmp_path):
    """from_pretrained(path, field=value): a new preset brings its own spec, a new width its own head and MLP
    widths (unless they are given too), and a bad value is refused at once, naming the field."""
    MirasConfig.from_model_config(model_config("moneta")).save_pretrained(tmp_path)
    yaad = AutoConfig.from_pretrained(tmp_path, preset="yaad")
    assert yaad.spec == presets.yaad().to_dict()
    wide = AutoConfig.from_pretrained(tmp_path, hidden_size=64, num_attention_heads=4)
    assert (wide.num_heads, wide.head_dim, wide.intermediate_size) == (
        4,
        16,
        MirasConfig(hidden_size=64).intermediate_size,
    )
    assert AutoConfig.from_pretrained(tmp_path, hidden_size=64, head_dim=8).head_dim == 8
    assert wide.delta_init is None  # Huber's δ start: the layer derives it from the head dim (2·√head_dim)
    assert AutoConfig.from_pretrained(tmp_path, head_dim=32, delta_init=1.0).delta_init == 1.0
    assert AutoConfig.from_pretrained(tmp_path, eos_token_id=3).spec["retention"] == "lq"
    with pytest.raises(ValueError, match="ModelConfig.num_heads=0"):
        AutoConfig.from_pretrained(tmp_path, num_heads=0)
    retnet = AutoConfig.from_pretrained(tmp_path, preset="retnet")  # a new preset brings its own gates too
    assert (retnet.eta_gate, retnet.alpha_gate) == ("fixed", "constant")


def test_a_config_json_from_before_the_gate_fields_loads_with_the_presets_gates(tmp_path):
    MirasConfig.from_model_config(model_config(preset="retnet")).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    for name in ("eta_gate", "alpha_gate"):
        del saved[name]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = AutoConfig.from_pretrained(tmp_path)
    assert (config.eta_gate, config.alpha_gate) == ("fixed", "constant")
    assert config.to_model_config().to_dict() == model_config(preset="retnet").to_dict()


def test_config_mirrors_model_config():
    for field in dataclasses.fields(ModelConfig):
        assert field.default == getattr(MirasConfig, field.name), field.name
    config = MirasConfig.from_model_config(model_config("moneta"))
    assert config.to_model_config().to_dict() == model_config("moneta").to_dict()
    assert config.num_attention_heads == config.num_heads == 2
    assert config.spec["retention"] == "lq"  # the preset's spec is stored resolved
    with pytest.raises(ValueError, match="ModelConfig.num_heads=0"):
        MirasConfig(num_heads=0)
    with pytest.raises(ValueError, match="ModelConfig.preset='nope'"):
        MirasConfig(preset="nope")
