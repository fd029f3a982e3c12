"""Experiments: studies that train many models and score them, each resumable in its own output folder.

- compare.py: several models under one parameter and token budget (`miras compare`);
- ablate.py: the paper's ablations, each a `compare` (`miras ablate`);
- mqar.py: zoology's MQAR sweeps (`miras recall mqar`), and the MQAR column of `compare`.

Every language model trains through `miras.train.train`; scoring comes from `miras.eval`.
"""
