"""Hugging Face models over the native `MirasLM`: `MirasModel` (hidden states) and `MirasForCausalLM` (logits, loss,
`generate()`).

Both hold one native MirasLM built from `MirasConfig.to_model_config()`; there is no second copy of any layer.
MirasForCausalLM calls the MirasLM itself (`forward` for prompts and training, `step` for one decoded token), so its
logits and loss are the native ones. MirasModel needs the hidden states before `lm_head`, which MirasLM does not
return, so it runs the same embed -> blocks -> norm sequence over the MirasLM's own modules.

State-dict keys are the native ones under a prefix: "model.lm." in MirasForCausalLM, "lm." in MirasModel.

Caching: `past_key_values` is a MirasHFCache wrapping the native MirasCache. A forward uses (and updates in place) a
cache it is given, and starts one when `use_cache=True`; otherwise it runs without one, so training and scoring
forwards do not pay for final states.

Padding: a recurrent memory cannot skip tokens, so only right padding is accepted, and only without a cache (every
layer is causal, so the logits of the real tokens are exact; those of pad positions are meaningless). Left or inner
padding raises ValueError, as does any padding when a cache is in use (generate() with padded prompts).
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation import GenerationMode
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from miras.hf.cache import MirasHFCache
from miras.hf.configuration import MirasConfig
from miras.models import MirasCache, MirasLM

# Beam search, contrastive search, DoLa and assisted decoding all rewind or reorder the past (crop the cache, re-score
# candidates, regroup beams); a memory state has absorbed its tokens and cannot be rewound.
SUPPORTED_GENERATION_MODES = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)


class MirasPreTrainedModel(PreTrainedModel):
    config_class = MirasConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["Block"]
    _skip_keys_device_placement = ["past_key_values"]
    # transformers refuses assisted decoding for stateful models by this flag.
    _is_stateful = True

    @torch.no_grad()
    def _init_weights(self, module: torch.nn.Module) -> None:
        # transformers calls this for each module that owns parameters it has not marked as initialized: every module
        # of a model just built, and after from_pretrained those whose parameters the checkpoint lacked.
        # - Just built: the native MirasLM has already initialized itself (residual projections scaled with depth,
        #   gate biases at their designed values, learned initial memories); transformers' generic scheme would undo
        #   that, so nothing happens here.
        # - Loaded, with parameters missing: the checkpoint does not fit this config. Refuse it: the native init
        #   works on the whole MirasLM, not per module, and uninitialized weights must not pass silently.
        if all(_marked(p) for p in module.parameters(recurse=False)):
            return
        if any(_marked(p) for p in self.parameters()):
            missing = [name for name, p in self.named_parameters() if not _marked(p)]
            raise ValueError(f"the checkpoint lacks {len(missing)} weight(s) of this Miras config: {missing[:8]}")


class MirasModel(MirasPreTrainedModel):
    """The MirasLM's final hidden states (after the last RMSNorm): BaseModelOutputWithPast."""

    _tied_weights_keys = {"lm.lm_head.weight": "lm.embed_tokens.weight"}

    def __init__(self, config: MirasConfig) -> None:
        super().__init__(config)
        self.lm = MirasLM(config.to_model_config())
        self.post_init()

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.lm.embed_tokens

    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        _set_token_embeddings(self.lm, value)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: MirasHFCache | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> BaseModelOutputWithPast | tuple:
        _refuse_unsupported(inputs_embeds, output_attentions, output_hidden_states)
        cache = self.prepare_cache(input_ids, attention_mask, past_key_values, use_cache)
        state = None if cache is None else _state_or_new(self.lm, cache, input_ids)
        hidden, state = self.lm.hidden_states(input_ids, state)
        if cache is not None:
            cache.state = state
        output = BaseModelOutputWithPast(last_hidden_state=hidden, past_key_values=cache)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def prepare_cache(
        self,
        input_ids: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        past_key_values: MirasHFCache | None,
        use_cache: bool | None,
    ) -> MirasHFCache | None:
        """Check the inputs; the cache this forward uses and updates (None: no cache)."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
            shape = list(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a [batch, tokens] tensor with at least one token, got {shape}")
        if past_key_values is not None and not isinstance(past_key_values, MirasHFCache):
            raise ValueError(
                "past_key_values must be a MirasHFCache (what generate() and earlier forwards return) or None, got "
                f"{type(past_key_values).__name__}"
            )
        cache = MirasHFCache() if past_key_values is None and use_cache else past_key_values
        if cache is not None and cache.batch_size not in (-1, input_ids.shape[0]):
            raise ValueError(f"the cache holds {cache.batch_size} sequences, input_ids has {input_ids.shape[0]}")
        _check_attention_mask(attention_mask, input_ids, cached=cache is not None)
        return cache


class MirasForCausalLM(MirasPreTrainedModel, GenerationMixin):
    """Next-token logits and loss of the native MirasLM; `generate()` with greedy decoding or sampling."""

    def __init__(self, config: MirasConfig) -> None:
        super().__init__(config)
        self.model = MirasModel(config)
        self.post_init()

    @property
    def lm(self) -> MirasLM:
        """The native model (shares every weight with this one)."""
        return self.model.lm

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.lm.embed_tokens

    def get_output_embeddings(self) -> torch.nn.Linear:
        return self.lm.lm_head

    # resize_token_embeddings() (adding a pad or special tokens) resizes through these; a tied head is re-tied after.
    def set_input_embeddings(self, value: torch.nn.Embedding) -> None:
        _set_token_embeddings(self.lm, value)

    def set_output_embeddings(self, value: torch.nn.Linear) -> None:
        self.lm.lm_head = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        past_key_values: MirasHFCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> CausalLMOutputWithPast | tuple:
        """labels [B, T] aligned with input_ids (the model shifts them; -100 is ignored), as in every HF causal LM."""
        _refuse_unsupported(inputs_embeds, output_attentions, output_hidden_states)
        cache = self.model.prepare_cache(input_ids, attention_mask, past_key_values, use_cache)
        if cache is None:
            out = self.lm(input_ids, labels=labels)
            logits = out.logits
        else:
            state = _state_or_new(self.lm, cache, input_ids)
            if input_ids.shape[1] == 1 and labels is None:  # a decoded token: the constant-time recurrent step
                out = self.lm.step(input_ids[:, 0], state)
                logits = out.logits[:, None]  # [B, 1, vocab]
            else:
                out = self.lm(input_ids, labels=labels, cache=state)
                logits = out.logits
            cache.state = out.cache
        output = CausalLMOutputWithPast(loss=out.loss, logits=logits, past_key_values=cache)
        return output if _return_dict(self.config, return_dict) else output.to_tuple()

    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """transformers' generate(), limited to greedy decoding and sampling (also with num_return_sequences > 1).

        The mode is checked before transformers looks at it: some unsupported modes would otherwise fail on an
        unrelated point first (contrastive search asks for trust_remote_code to fetch its code from the Hub).
        """
        config, _ = self._prepare_generation_config(generation_config, **kwargs)
        mode = config.get_generation_mode(kwargs.get("assistant_model"))
        if mode not in SUPPORTED_GENERATION_MODES:
            raise ValueError(
                f"{type(self).__name__}.generate() supports greedy decoding and sampling only (num_beams=1, no "
                f"assistant model or prompt lookup); got generation mode {mode.value!r}. Beam search, contrastive "
                "search, DoLa and assisted decoding rewind or reorder past tokens, which a recurrent memory cannot do"
            )
        return super().generate(inputs, generation_config, **kwargs)

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs: dict, generation_mode, batch_size: int, max_cache_length: int
    ) -> None:
        # transformers would build a DynamicCache of per-layer key/value tensors; a Miras model carries its state in a
        # MirasHFCache. A cache passed by the caller (to continue from it) goes through transformers' own checks.
        if generation_config.cache_implementation is not None:
            raise ValueError(
                f"cache_implementation={generation_config.cache_implementation!r} is not supported: Miras models "
                "decode with their own recurrent cache (MirasHFCache); leave cache_implementation unset"
            )
        if model_kwargs.get("past_key_values") is None and generation_config.use_cache:
            model_kwargs["past_key_values"] = MirasHFCache()
            return
        super()._prepare_cache_for_generation(
            generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
        )


def _refuse_unsupported(inputs_embeds, output_attentions, output_hidden_states) -> None:
    """The usual HF forward arguments this model does not serve: a clear error instead of a TypeError."""
    if inputs_embeds is not None:
        raise ValueError("inputs_embeds is not supported: a Miras model embeds input_ids itself (pass input_ids)")
    if output_attentions:
        raise ValueError("output_attentions is not supported: Miras memory layers have no attention weights")
    if output_hidden_states:
        raise ValueError(
            "output_hidden_states is not supported; MirasModel returns the final hidden states "
            "(last_hidden_state), and forward hooks on model.lm.layers give each block's output"
        )


def _set_token_embeddings(lm: MirasLM, value: torch.nn.Embedding) -> None:
    """A new token embedding (resize_token_embeddings); the native config's vocab_size follows it."""
    lm.embed_tokens = value
    lm.config = dataclasses.replace(lm.config, vocab_size=value.num_embeddings)


def _state_or_new(lm: MirasLM, cache: MirasHFCache, input_ids: torch.Tensor) -> MirasCache:
    """The cache's native state, or the state before the first token for a fresh cache."""
    return cache.state if cache.state is not None else lm.allocate_cache(input_ids.shape[0])


def _return_dict(config: MirasConfig, return_dict: bool | None) -> bool:
    return config.return_dict if return_dict is None else return_dict


def _check_attention_mask(mask: torch.Tensor | None, input_ids: torch.Tensor, cached: bool) -> None:
    """Accept no mask, an all-ones mask, or right padding without a cache (see the module docstring)."""
    if mask is None:
        return
    B, T = input_ids.shape
    # generate() passes the mask of the whole sequence so far (cached tokens included).
    if mask.dim() != 2 or mask.shape[0] != B or mask.shape[1] < T:
        raise ValueError(f"attention_mask must be [batch, >= tokens] for input_ids {[B, T]}, got {list(mask.shape)}")
    keep = mask.bool()
    if keep.all():
        return
    if cached:
        raise ValueError(
            "attention_mask has padding (zeros) while a cache is in use: a recurrent memory cannot skip padded tokens, "
            "so padded prompts cannot be decoded in one batch. Call generate() once per prompt length, or "
            "batch prompts of equal length"
        )
    if not (keep[:, 1:] <= keep[:, :-1]).all():
        raise ValueError(
            "attention_mask has zeros before a real token (left or inner padding): a recurrent memory cannot skip "
            "tokens. Pad on the right (padding_side='right') or not at all"
        )


def _marked(param: torch.nn.Parameter) -> bool:
    """Whether transformers marked the parameter as loaded (or as tied to a loaded one)."""
    return getattr(param, "_is_hf_initialized", False)
