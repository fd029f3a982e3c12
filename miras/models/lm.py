"""MirasLM: Llama's macro-architecture with Miras token mixers (arXiv 2504.13173, Sec. 6).

    embed ─ Block × L ─ RMSNorm ─ lm_head (optionally tied to embed)
    Block: x + mixer(RMSNorm(x)), then x + SwiGLU(RMSNorm(x))

The mixer is a MirasLayer, or softmax attention: in every block for preset "transformer" (Transformer++: RoPE,
full causal attention), in every `hybrid_attention_every`-th block for the "-H" hybrids (sliding-window attention).
Decoding prefills with the chunk-parallel path and then calls `step`, whose cost per token is constant for Miras and
sliding-window layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from miras.config import ModelConfig
from miras.layers import Attention, MirasLayer
from miras.layers.weight_decay import no_weight_decay
from miras.models.cache import LayerCache, MirasCache


@dataclass
class LMOutput:
    """logits [B, T, vocab] ([B, vocab] from `step`); loss: mean next-token cross-entropy when labels were given;
    cache: the cache after these tokens when one was given."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    cache: MirasCache | None = None


class SwiGLU(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)  # fused W1 | W3
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm residual block; the mixer is attention or a MirasLayer by `config.is_attention_layer(layer_idx)`."""

    def __init__(self, config: ModelConfig, layer_idx: int, mode: str = "chunk") -> None:
        super().__init__()
        self.mixer_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        if config.is_attention_layer(layer_idx):
            self.mixer: Attention | MirasLayer = Attention(config, layer_idx, config.attention_span)
        else:
            self.mixer = MirasLayer(config, layer_idx, mode)
        self.mlp_norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config)
        no_weight_decay(self.mixer_norm.weight, self.mlp_norm.weight)

    @property
    def residual_projections(self) -> list[nn.Linear]:
        return [*self.mixer.residual_projections, self.mlp.down_proj]

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> tuple[torch.Tensor, LayerCache | None]:
        """x [B, T, hidden] -> (x [B, T, hidden], the mixer's new cache or None)."""
        h, cache = self.mixer(self.mixer_norm(x), cache)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache

    def step(self, x: torch.Tensor, cache: LayerCache) -> tuple[torch.Tensor, LayerCache]:
        """x [B, hidden] -> (x [B, hidden], the mixer's new cache)."""
        # With the blocks spread over GPUs (transformers' device_map), accelerate's hooks move the inputs of forward
        # calls only; step is not one, so x, still on the previous block's device, comes here first.
        x = x.to(self.mixer_norm.weight.device)
        h, cache = self.mixer.step(self.mixer_norm(x), cache)
        x = x + h
        return x + self.mlp(self.mlp_norm(x)), cache


class MirasLM(nn.Module):
    """Causal language model. mode "chunk" (training) or "recurrent" (the token-loop reference) for Miras layers."""

    def __init__(self, config: ModelConfig, mode: str = "chunk") -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i, mode) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        no_weight_decay(self.norm.weight)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialize every parameter; safe after `to_empty()` of a model built on the meta device.

        Linear and embedding weights ~ N(0, initializer_range); projections into the residual stream additionally
        scaled by 1/sqrt(2 · num_layers) (GPT-2), since 2 per block add up. Then every other module's own
        `reset_parameters` (norms, convs, gates, initial memories), which may override a Linear it owns (a gate's
        zero up-projection).
        """
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * self.config.num_hidden_layers)
        for block in self.layers:
            for proj in block.residual_projections:
                nn.init.normal_(proj.weight, mean=0.0, std=residual_std)
        for module in self.modules():
            if module is not self and not isinstance(module, (nn.Linear, nn.Embedding)):
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Distinct parameters (a tied lm_head counts once); optionally without the token embedding."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed_tokens.weight.numel() if exclude_embeddings else total

    def allocate_cache(self, batch_size: int) -> MirasCache:
        """The decode cache before the first token, for `batch_size` sequences."""
        return MirasCache(tuple(block.mixer.allocate_cache(batch_size) for block in self.layers))

    def forward(
        self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, cache: MirasCache | None = None
    ) -> LMOutput:
        """input_ids [B, T]; labels [B, T] aligned with input_ids (the model shifts: position t predicts labels
        t+1; -100 is ignored); cache: continue from it and return the updated one."""
        hidden, cache = self.hidden_states(input_ids, cache)
        logits = self.lm_head(hidden)  # [B, T, vocab]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return LMOutput(logits, loss, cache)

    def hidden_states(
        self, input_ids: torch.Tensor, cache: MirasCache | None = None
    ) -> tuple[torch.Tensor, MirasCache | None]:
        """The final hidden states [B, T, hidden] (after the last norm) and, given a cache, the updated one."""
        x = self.embed_tokens(input_ids)  # [B, T, hidden]
        new_layers = []
        for i, block in enumerate(self.layers):
            x, layer_cache = block(x, None if cache is None else cache.layers[i])
            new_layers.append(layer_cache)
        return self.norm(x), None if cache is None else MirasCache(tuple(new_layers))

    def step(self, input_ids: torch.Tensor, cache: MirasCache) -> LMOutput:
        """One token per sequence: input_ids [B] -> logits [B, vocab] and the cache after it."""
        x = self.embed_tokens(input_ids)  # [B, hidden]
        new_layers = []
        for block, layer_cache in zip(self.layers, cache.layers):
            x, layer_cache = block.step(x, layer_cache)
            new_layers.append(layer_cache)
        return LMOutput(self.lm_head(self.norm(x)), None, MirasCache(tuple(new_layers)))

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Sample a continuation: input_ids [B, T] -> [B, T + max_new_tokens].

        The prompt is prefilled in one chunk-parallel forward, then every new token costs one `step`.
        temperature 0 is greedy; top_k keeps only the k most likely tokens before sampling.
        """
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be None or >= 1, got {top_k}")
        if max_new_tokens == 0:
            return input_ids
        tokens = [input_ids]
        out = self(input_ids, cache=self.allocate_cache(input_ids.shape[0]))
        logits, cache = out.logits[:, -1], out.cache  # [B, vocab]
        for i in range(max_new_tokens):
            next_ids = _sample(logits, temperature, top_k, generator)  # [B]
            tokens.append(next_ids[:, None])
            if i + 1 < max_new_tokens:
                out = self.step(next_ids, cache)
                logits, cache = out.logits, out.cache
        return torch.cat(tokens, dim=1)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None):
    """logits [B, vocab] -> token ids [B]."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
