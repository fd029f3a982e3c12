"""`MirasConfig`: the Hugging Face mirror of `miras.config.ModelConfig` (model_type "miras").

Every ModelConfig field is a field here with the same name and default, so `config.json` holds exactly what the
native model needs; `to_model_config()` builds the ModelConfig, which validates the values (its ValueErrors name the
field). On construction the resolved values are written back (head_dim, intermediate_size, the memory spec and the
gates of the preset), so a saved config.json does not depend on later changes to the presets, as a run folder's does not.
HF's conventional `num_attention_heads` is an alias of `num_heads`.
"""

from __future__ import annotations

import dataclasses

from transformers import PreTrainedConfig

from miras.config import ModelConfig
from miras.hf import MODEL_TYPE

MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))

# Fields written back resolved, and the fields they are resolved from: a source overridden when loading
# (`from_pretrained(path, preset="yaad")`) resolves them again, unless they are overridden too.
RESOLVED_FROM = {
    "spec": ("preset",),
    "eta_gate": ("preset",),
    "alpha_gate": ("preset",),
    "head_dim": ("hidden_size", "num_heads"),
    "intermediate_size": ("hidden_size",),
}


class MirasConfig(PreTrainedConfig):
    model_type = MODEL_TYPE
    attribute_map = {"num_attention_heads": "num_heads"}
    keys_to_ignore_at_inference = ["past_key_values"]

    # ModelConfig's fields and defaults (tests check the two stay in step); `spec` is MemorySpec.to_dict() or None.
    preset: str = "moneta"
    spec: dict | None = None
    eta_gate: str | None = None
    alpha_gate: str | None = None
    vocab_size: int = 8192
    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int | None = None
    norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    chunk_size: int = 64
    conv_size: int = 4
    use_rope: bool = True
    rope_theta: float = 10000.0
    gate_rank: int = 32
    eta_init: float = 0.1
    delta_init: float | None = None
    hybrid_attention_every: int = 0
    attention_window: int = 2048
    max_position_embeddings: int = 4096

    # HF-only fields: the tokenizer's special tokens, which generate() reads (EOS stops a sequence).
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name, value in self.to_model_config().to_dict().items():
            setattr(self, name, value)

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config with overrides (`from_pretrained(path, **kwargs)`). transformers sets overrides on the built
        config, after validation and after the resolved fields were written back: a new preset kept the old preset's
        spec (yaad's gates around moneta's memory). Model fields are applied to the dict before the config is built
        instead: validated, and what was resolved from them is resolved again (RESOLVED_FROM)."""
        names = cls.attribute_map  # num_attention_heads -> num_heads
        overrides = {
            names.get(key, key): kwargs.pop(key) for key in list(kwargs) if names.get(key, key) in MODEL_FIELDS
        }
        if overrides:
            config_dict = dict(config_dict)
            for field, sources in RESOLVED_FROM.items():
                if field not in overrides and any(
                    s in overrides and overrides[s] != config_dict.get(s) for s in sources
                ):
                    config_dict[field] = None
            config_dict.update(overrides)
        return super().from_dict(config_dict, **kwargs)

    def to_model_config(self) -> ModelConfig:
        """The native config (raises ValueError naming the field for an invalid value)."""
        return ModelConfig.from_dict({name: getattr(self, name) for name in MODEL_FIELDS})

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs) -> "MirasConfig":
        """kwargs: the HF-only fields (bos/eos/pad_token_id) and anything PreTrainedConfig accepts."""
        return cls(**config.to_dict(), **kwargs)
