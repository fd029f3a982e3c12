"""MirasLM and ModelConfig: config validation and round trip, forward/backward for every mixer, a few AdamW steps
reduce the loss, and cached decoding (prefill + step, generate) ≡ the full forward in float64."""

from __future__ import annotations

import json
import math

import pytest
import torch

from miras import presets
from miras.config import SIZES, ModelConfig
from miras.layers import Attention, MirasLayer
from miras.models import MirasLM

VOCAB = 40
T = 11


def _config(preset: str = "moneta", **overrides) -> ModelConfig:
    fields = dict(
        preset=preset,
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_heads=2,
        chunk_size=4,
        gate_rank=4,
        attention_window=3,
    )
    return ModelConfig(**{**fields, **overrides})


def _model(config: ModelConfig, dtype=torch.float64) -> MirasLM:
    torch.manual_seed(0)
    model = MirasLM(config).to(dtype)
    with torch.no_grad():  # far from init, so that every path contributes visibly to the logits
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.3)
    return model


MIXERS = [("preset", p, 0) for p in sorted(presets.PRESETS)]
MIXERS += [("transformer", "transformer", 0), ("hybrid", "yaad", 2)]


@pytest.mark.parametrize("kind, preset, every", MIXERS, ids=[f"{k}-{p}" for k, p, _ in MIXERS])
def test_forward_backward(kind, preset, every):
    model = MirasLM(_config(preset, hybrid_attention_every=every, num_hidden_layers=2))
    ids = torch.randint(0, VOCAB, (2, T))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, T, VOCAB) and out.cache is None
    assert math.isfinite(out.loss.item()) and abs(out.loss.item() - math.log(VOCAB)) < 0.5  # near uniform at init
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    mixers = [type(block.mixer) for block in model.layers]
    expected = {"preset": [MirasLayer] * 2, "transformer": [Attention] * 2, "hybrid": [MirasLayer, Attention]}[kind]
    assert mixers == expected
    windows = [block.mixer.window for block in model.layers if isinstance(block.mixer, Attention)]
    assert windows == {"preset": [], "transformer": [None, None], "hybrid": [3]}[kind]  # hybrids use SWA


def test_loss_ignores_labels():
    model = MirasLM(_config())
    ids = torch.randint(0, VOCAB, (2, T))
    labels = ids.clone()
    labels[:, 5:] = -100
    loss = model(ids, labels=labels).loss
    logits = model(ids).logits
    reference = torch.nn.functional.cross_entropy(logits[:, :4].flatten(0, 1), ids[:, 1:5].flatten())
    torch.testing.assert_close(loss, reference)


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = MirasLM(_config("moneta", hidden_size=32))
    ids = torch.randint(0, VOCAB, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses


DECODE = [("moneta", 0), ("titans", 0), ("transformer", 0), ("memora", 2)]


@pytest.mark.parametrize("preset, every", DECODE, ids=[f"{p}-H{e}" for p, e in DECODE])
def test_cached_decoding(preset, every):
    model = _model(_config(preset, hybrid_attention_every=every, num_hidden_layers=2))
    ids = torch.randint(0, VOCAB, (2, T))
    full = model(ids).logits  # [B, T, vocab]
    split = 6
    out = model(ids[:, :split], cache=model.allocate_cache(2))
    logits, cache = [out.logits], out.cache
    for t in range(split, T):
        out = model.step(ids[:, t], cache)
        logits.append(out.logits[:, None])
        cache = out.cache
    torch.testing.assert_close(torch.cat(logits, 1), full, rtol=1e-9, atol=1e-9)
    assert cache.position == T

    generated = model.generate(ids[:, :3], max_new_tokens=6, temperature=0)
    assert generated.shape == (2, 9) and torch.equal(generated[:, :3], ids[:, :3])
    greedy = model(generated).logits[:, 2:-1].argmax(-1)  # each new token is the full forward's argmax
    assert torch.equal(generated[:, 3:], greedy)


def test_generate_sampling():
    model = _model(_config("deltanet"), dtype=torch.float32)
    prompt = torch.randint(0, VOCAB, (3, 4))

    def sample(seed, **kw):
        return model.generate(prompt, 5, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(sample(1), sample(1))
    assert torch.equal(model.generate(prompt, 0), prompt)
    top1 = sample(2, top_k=1)
    assert torch.equal(top1, model.generate(prompt, 5, temperature=0))  # top-1 sampling is greedy


def test_init_weights():
    config = _config(num_hidden_layers=4, initializer_range=0.02, hidden_size=64, num_heads=4)
    model = MirasLM(config)
    assert model.lm_head.weight is model.embed_tokens.weight
    block = model.layers[0]
    assert block.mixer.qkv_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert block.mlp.down_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert block.mixer.o_proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.1)
    assert torch.equal(block.mixer.eta_gate.up.weight, torch.zeros_like(block.mixer.eta_gate.up.weight))
    untied = MirasLM(_config(tie_word_embeddings=False))
    embed = untied.embed_tokens.weight.numel()
    assert untied.num_parameters() - untied.num_parameters(exclude_embeddings=True) == embed
    assert untied.num_parameters() == MirasLM(_config()).num_parameters() + embed


def test_config_round_trip():
    config = ModelConfig.from_size("tiny", preset="yaad", spec=presets.yaad(mlp_expansion=2), hybrid_attention_every=2)
    data = json.loads(config.to_json())
    restored = ModelConfig.from_dict(data)
    assert restored == config and restored.memory_spec.mlp_expansion == 2
    plain = ModelConfig(preset="moneta")  # to_dict stores the resolved spec
    assert plain.to_dict()["spec"] == presets.moneta().to_dict()
    assert ModelConfig.from_dict(plain.to_dict()).to_dict() == plain.to_dict()
    assert ModelConfig(preset="transformer").to_dict()["spec"] is None


def test_gates_are_saved_fields_so_retnet_and_mamba2_differ():
    """retnet and mamba2 share a MemorySpec; their gates tell them apart, in the saved config too."""
    retnet, mamba2 = (ModelConfig(preset=name).to_dict() for name in ("retnet", "mamba2"))
    assert retnet["spec"] == mamba2["spec"] and retnet != mamba2
    assert (retnet["eta_gate"], retnet["alpha_gate"]) == ("fixed", "constant")
    assert (mamba2["eta_gate"], mamba2["alpha_gate"]) == ("data_dependent", "data_dependent")
    # The gates are set by the fields, not by the preset's name: moneta's name with RetNet's spec and gates is RetNet.
    as_retnet = ModelConfig(preset="moneta", spec=presets.retnet(), eta_gate="fixed", alpha_gate="constant")
    assert {k: v for k, v in as_retnet.to_dict().items() if k != "preset"} == {
        k: v for k, v in retnet.items() if k != "preset"
    }
    assert ModelConfig(preset="transformer").to_dict()["eta_gate"] is None


@pytest.mark.parametrize("preset", ["retnet", "mamba2", "linear_attention", "moneta"])
def test_a_config_saved_before_the_gate_fields_loads_with_the_gates_it_had(preset):
    """A run folder's config.json from before eta_gate / alpha_gate: the preset implied the gates."""
    old = {
        k: v
        for k, v in ModelConfig.from_size("tiny", preset=preset).to_dict().items()
        if k not in ("eta_gate", "alpha_gate")
    }
    loaded = ModelConfig.from_dict(json.loads(json.dumps(old)))
    assert loaded.to_dict() == ModelConfig.from_size("tiny", preset=preset).to_dict()
    layer = MirasLM(loaded).layers[0].mixer
    assert (layer.eta_gate is None) == (preset in ("retnet", "linear_attention"))
    assert (layer.alpha_gate is not None and layer.alpha_gate.up is None) == (preset == "retnet")


@pytest.mark.parametrize("name", sorted(SIZES))
def test_sizes(name):
    config = ModelConfig.from_size(name, preset="titans")
    assert config.head_dim * config.num_heads == config.hidden_size and config.intermediate_size % 64 == 0
    assert ModelConfig.from_size(name, num_hidden_layers=1).num_hidden_layers == 1


def test_paper_sizes():
    for name, (layers, dim, heads) in {"170m": (12, 768, 16), "340m": (24, 1024, 16), "780m": (24, 1536, 16)}.items():
        config = ModelConfig.from_size(name)
        assert (config.num_hidden_layers, config.hidden_size, config.num_heads) == (layers, dim, heads)


@pytest.mark.parametrize(
    "fields, field",
    [
        (dict(preset="gpt"), "preset"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(hidden_size=10, num_heads=4), "head_dim"),
        (dict(head_dim=7), "head_dim"),
        (dict(norm_eps=-1.0), "norm_eps"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(use_rope=1), "use_rope"),
        (dict(hybrid_attention_every=-1), "hybrid_attention_every"),
        (dict(preset="transformer", hybrid_attention_every=2), "hybrid_attention_every"),
        (dict(preset="transformer", spec=presets.moneta()), "spec"),
        (dict(spec="moneta"), "spec"),
        (dict(eta_gate="learned"), "eta_gate"),
        (dict(alpha_gate="fixed"), "alpha_gate"),
        (dict(preset="transformer", alpha_gate="constant"), "alpha_gate"),
    ],
)
def test_config_validation(fields, field):
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**fields)
    with pytest.raises(ValueError, match="unknown size"):
        ModelConfig.from_size("7b")
