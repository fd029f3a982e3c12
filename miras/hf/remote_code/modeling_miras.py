"""MirasModel and MirasForCausalLM for `trust_remote_code=True` (see configuration_miras.py next to this file): the
installed package's classes, bound to the remote-code config class."""

from miras.hf.modeling import MirasForCausalLM as _MirasForCausalLM
from miras.hf.modeling import MirasModel as _MirasModel

from .configuration_miras import MirasConfig


class MirasModel(_MirasModel):
    config_class = MirasConfig


class MirasForCausalLM(_MirasForCausalLM):
    config_class = MirasConfig
