"""MirasConfig for `trust_remote_code=True`. `miras convert to-hf` copies this file into the Hugging Face folder, and
its config.json's auto_map names it, so transformers (and lm-eval's `--model hf`) load the folder without importing
miras first. The class is the installed package's (pip install 'miras[hf]'): a subclass only so that transformers'
bookkeeping of remote-code classes (register_for_auto_class) lands here, not on miras's own class."""

from miras.hf.configuration import MirasConfig as _MirasConfig


class MirasConfig(_MirasConfig):
    pass
