"""Conversion between a `miras train` run folder and a Hugging Face folder, and loading a Hugging Face folder.

A Hugging Face folder written by `run_to_hf`:

    config.json, generation_config.json, model.safetensors    MirasForCausalLM.save_pretrained (keys "model.lm.*")
    configuration_miras.py, modeling_miras.py    for trust_remote_code=True (remote_code/; config.json's auto_map)
    tokenizer_meta.json [+ tokenizer.json], tokenizer_config.json    see tokenizer.py
    miras_run.json      {"train": the run's TrainConfig, "checkpoint": its checkpoint folder's name}

`hf_to_run` writes a run folder that `load_trained` / `miras generate` / `miras eval` read: config.json
({"train", "model"}), tokenizer/, `latest` and one checkpoint folder holding model.safetensors. miras_run.json makes
run -> HF -> run give back the same config and checkpoint name. A folder without it (a model saved from Python) gets
TrainConfig's defaults with the preset, sequence length and tokenizer of the model, which is what tools read from
"train". Optimizer state does not travel, so a converted run can be evaluated and sampled but not resumed.

Outputs are built in a temporary sibling folder and renamed into place, so `out_dir` is complete or absent. An
existing non-empty `out_dir` is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors.torch import save_model
from transformers.initialization import no_init_weights

from miras.config import ModelConfig
from miras.data import Tokenizer
from miras.data.tokenizer import META_FILE
from miras.hf import MODEL_TYPE, is_hf_folder
from miras.hf.configuration import MirasConfig
from miras.hf.modeling import MirasForCausalLM
from miras.hf.tokenizer import save_hf_tokenizer
from miras.io_atomic import publish_folder
from miras.models import MirasLM

RUN_FILE = "miras_run.json"
# Copied into a Hugging Face folder and named by its config.json's auto_map, so that transformers loads the folder with
# trust_remote_code=True and no `import miras.hf.auto`: plain `lm_eval --model hf`, for one.
REMOTE_CODE_DIR = Path(__file__).with_name("remote_code")
AUTO_MAP = {
    "AutoConfig": "configuration_miras.MirasConfig",
    "AutoModel": "modeling_miras.MirasModel",
    "AutoModelForCausalLM": "modeling_miras.MirasForCausalLM",
}
HF_CONFIG = "config.json"
CHECKPOINT_NAME = re.compile(r"checkpoint-\d+")


def load_hf(path: str | os.PathLike) -> tuple[MirasForCausalLM, Tokenizer]:
    """A Hugging Face folder -> (MirasForCausalLM in eval mode, the miras Tokenizer). Every weight must load: a
    checkpoint that misses some or has others raises ValueError (transformers would only warn)."""
    path = _check_hf_folder(path)
    try:
        # Safetensors only, as the trainer's checkpoints: loading never unpickles.
        model, info = MirasForCausalLM.from_pretrained(str(path), output_loading_info=True, use_safetensors=True)
    except ValueError as e:  # an invalid config value, or weights that fit only partly (see MirasPreTrainedModel)
        raise ValueError(f"{path}: {e}") from None
    kinds = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {kind: sorted(map(str, info[kind])) for kind in kinds if info.get(kind)}
    if problems:
        raise ValueError(f"{path}: the weights do not fit its config.json: {problems}")
    return model.eval(), _load_tokenizer(path)


def run_to_hf(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A run folder (its latest checkpoint) or one of its checkpoint folders -> a new Hugging Face folder."""
    from miras.run.checkpoint import load_model_weights, resolve_checkpoint
    from miras.run.folder import TOKENIZER_DIR, read_config

    out = _new_folder(out_dir)
    run_dir, checkpoint = resolve_checkpoint(run_dir)
    saved = read_config(run_dir)
    tokenizer = _load_tokenizer(run_dir / TOKENIZER_DIR)
    config = MirasConfig.from_model_config(
        _model_config(saved, run_dir),
        bos_token_id=tokenizer.eos_id,
        eos_token_id=tokenizer.eos_id,
        pad_token_id=tokenizer.eos_id,
    )
    # The weights are loaded right after: skip transformers' (and so the native) initialization.
    with no_init_weights():
        model = MirasForCausalLM(config)
    load_model_weights(model.lm, checkpoint)

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        _add_remote_code(tmp)
        save_hf_tokenizer(tokenizer, tmp)
        record = {"train": saved.get("train"), "checkpoint": checkpoint.name}
        (tmp / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

    return _write_folder(out, write)


def _add_remote_code(folder: Path) -> None:
    """The remote-code files and config.json's auto_map (ignored unless the loader passes trust_remote_code=True)."""
    for name in ("configuration_miras.py", "modeling_miras.py"):
        shutil.copyfile(REMOTE_CODE_DIR / name, folder / name)
    config_file = folder / HF_CONFIG
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["auto_map"] = AUTO_MAP
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def hf_to_run(hf_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """A Hugging Face folder of a Miras model (with the miras tokenizer files) -> a new run folder."""
    from miras.run.checkpoint import LATEST, MODEL_FILE, checkpoint_name
    from miras.run.folder import TOKENIZER_DIR, write_config
    from miras.train.config import TrainConfig

    out = _new_folder(out_dir)
    model, tokenizer = load_hf(hf_dir)
    model_config = model.config.to_model_config()
    record_file = Path(hf_dir) / RUN_FILE
    if record_file.is_file():
        train, checkpoint = _read_record(record_file)
    else:
        train = TrainConfig(
            preset=model_config.preset,
            seq_len=model_config.max_position_embeddings,
            tokenizer=tokenizer.kind,
            vocab_size=tokenizer.vocab_size,
        ).to_dict()
        checkpoint = checkpoint_name(0)

    def write(tmp: Path) -> None:
        write_config(tmp, train, model_config.to_dict())
        tokenizer.save(tmp / TOKENIZER_DIR)
        (tmp / checkpoint).mkdir()
        _save_native(model.lm, tmp / checkpoint / MODEL_FILE)
        (tmp / LATEST).write_text(checkpoint + "\n", encoding="utf-8")

    return _write_folder(out, write)


def _save_native(lm: MirasLM, path: Path) -> None:
    # save_model (not save_file): a tied lm_head shares the embedding's storage, as in the trainer's checkpoints.
    save_model(lm, str(path))


def _model_config(saved: dict, run_dir: Path) -> ModelConfig:
    if not isinstance(saved.get("model"), dict):
        raise ValueError(f"{run_dir}: config.json has no 'model' section")
    return ModelConfig.from_dict(saved["model"])


def _read_record(path: Path) -> tuple[dict | None, str]:
    """miras_run.json -> (the run's train config, its checkpoint folder name)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        train, checkpoint = record["train"], record["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a run record ({e!r}); expected keys 'train' and 'checkpoint'") from None
    # The name becomes a folder of the new run: nothing but checkpoint-<digits> (no path may escape it).
    if not isinstance(checkpoint, str) or not CHECKPOINT_NAME.fullmatch(checkpoint):
        raise ValueError(f"{path}: checkpoint {checkpoint!r} is not a checkpoint-NNNNNNN folder name")
    return train, checkpoint


def _check_hf_folder(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such Hugging Face folder")
    if not (path / HF_CONFIG).is_file():
        raise ValueError(f"{path}: not a Hugging Face folder (no {HF_CONFIG})")
    if not is_hf_folder(path):
        raise ValueError(f"{path}: {HF_CONFIG} is not a Miras model's (model_type must be {MODEL_TYPE!r})")
    if not any(path.glob("*.safetensors")):
        raise ValueError(f"{path}: no weights (*.safetensors)")
    return path


def _load_tokenizer(path: Path) -> Tokenizer:
    if not (path / META_FILE).is_file():
        raise ValueError(f"{path}: no miras tokenizer (no {META_FILE})")
    return Tokenizer.load(path)


def _new_folder(out_dir: str | os.PathLike) -> Path:
    """`out_dir`, checked before any work: it must not exist, or be an empty folder."""
    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ValueError(f"{out}: already exists; give a new folder (the output is never merged into another)")
    return out


def _write_folder(out: Path, write) -> Path:
    """Run write(tmp) on a fresh temporary folder next to `out`, then rename it to `out` (which fails, rather than
    merging, if another process has filled `out` meanwhile)."""
    from miras.run.folder import as_umask_allows

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left over from a conversion killed midway
    tmp.mkdir()
    try:
        write(tmp)
        as_umask_allows(tmp)
        publish_folder(tmp, out)  # durable (miras/io_atomic.py); also replaces an empty out_dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
