"""Language models built from Miras layers: MirasLM (also the Transformer++ baseline and the "-H" hybrids)."""

from miras.models.cache import MirasCache, state_size
from miras.models.lm import Block, LMOutput, MirasLM

__all__ = ["Block", "LMOutput", "MirasCache", "MirasLM", "state_size"]
