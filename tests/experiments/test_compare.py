import json
import random

import pytest
import torch

from miras.cli import main
from miras.config import ModelConfig
from miras.experiments import compare as compare_module
from miras.experiments import mqar as mqar_module
from miras.experiments.ablate import YAAD_VARIANTS, ablate, ablation_candidates
from miras.experiments.compare import (
    DEFAULT_MODELS,
    Candidate,
    CompareConfig,
    candidates_for,
    compare,
    model_configs,
)
from miras.models import MirasLM
from miras.presets import moneta
from miras.run.folder import MetricsLog
from miras.train import ConfigError, TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """~25 KB of sentences from a small grammar: a BPE of a few hundred tokens trains on it in well under a second."""
    rng = random.Random(0)
    nouns = ["nation", "congress", "people", "union", "treaty", "army", "law", "state", "citizen", "trade"]
    verbs = ["protects", "needs", "serves", "builds", "defends", "honors", "supports", "reviews"]
    text = " ".join(f"The {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}." for _ in range(600))
    path = tmp_path_factory.mktemp("data") / "grammar.txt"
    path.write_text(text + "\n", encoding="utf-8")
    return path


def micro(data, tmp_path, **changes) -> CompareConfig:
    """A microscopic budget: a few steps of a few short sequences, tiny MQAR and NIAH, one thread."""
    fields = dict(
        steps=2,
        batch_size=2,
        seq_len=32,
        data=str(data),
        val_data=(str(data),),
        vocab_size=300,
        eval_tokens=128,
        mqar_steps=2,
        mqar_seq_len=16,
        mqar_kv_pairs=2,
        mqar_batch_size=4,
        mqar_vocab_size=32,
        niah_lengths=(400,),
        niah_depths=(0.5,),
        niah_variants=("passkey",),
        niah_samples=1,
        device="cpu",
        threads=1,
        progress=False,
        cache_dir=str(tmp_path / "cache"),
    )
    return CompareConfig(**{**fields, **changes})


def quiet(_: str) -> None:
    pass


def test_compare_end_to_end_then_resume(data, tmp_path):
    out = tmp_path / "cmp"
    config = micro(data, tmp_path)
    rows = compare(candidates_for(["moneta", "transformer"]), config, out, log=quiet)

    assert [r["name"] for r in rows] == ["moneta", "transformer"]
    for row in rows:
        assert row["errors"] == {}
        lm = row["lm"]
        assert lm["steps"] == 2 and lm["tokens"] == 2 * 2 * 32
        assert lm["ppl"][str(data)]["ppl"] > 1 and lm["tok_s"] > 0 and len(lm["train_loss"]) >= 1
        assert 0 <= row["mqar"]["accuracy"] <= 1 and 0 <= row["niah"]["accuracy"] <= 1
        assert (out / "runs" / row["name"] / "latest").is_file()
    # Matched budgets: same width and embedding, non-embedding counts within one SwiGLU unit (3 * width * layers).
    moneta_lm, transformer_lm = rows[0]["lm"], rows[1]["lm"]
    assert moneta_lm["hidden_size"] == transformer_lm["hidden_size"] == 128
    assert abs(moneta_lm["non_embedding_params"] - transformer_lm["non_embedding_params"]) <= 3 * 128 * 2
    assert transformer_lm["intermediate_size"] > moneta_lm["intermediate_size"]

    table = (out / "results.md").read_text()
    assert "| Model | grammar.txt ppl" not in table  # the set is named by its spec as given
    assert "MQAR acc ↑ | NIAH acc ↑ | params | non-emb params | MLP width | tok/s ↑ |" in table
    # MQAR trains each design at zoology's shape, not the LM's; an all-zero NIAH column says why under the table
    assert all(row["mqar"]["width"] == 64 for row in rows)
    assert (compare_module.NIAH_AT_ZERO in table) == (not any(row["niah"]["accuracy"] for row in rows))
    assert table.count("\n| moneta |") == 1 and table.count("\n| transformer |") == 1
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["rows"]) == {"moneta", "transformer"} and saved["budget"]["steps"] == 2
    assert (out / "loss.png").is_file() and (out / "tokenizer" / "tokenizer.json").is_file()

    messages = []
    again = compare(candidates_for(["moneta", "transformer"]), config, out, log=messages.append)
    assert again == rows
    assert all("already finished" in m for m in messages)

    changed = Candidate("moneta", "moneta", spec=moneta(p=2.0))  # same name, another model: never silently reused
    with pytest.raises(ConfigError, match="holds a different model") as e:
        compare([changed], config, out, log=quiet)
    assert e.value.field == "out"

    with pytest.raises(ConfigError, match="another budget.*steps") as e:
        compare(candidates_for(["moneta"]), micro(data, tmp_path, steps=3), out, log=quiet)
    assert e.value.field == "out"


def test_a_candidate_trains_exactly_like_miras_train(data, tmp_path):
    """compare trains each candidate through train() with its ModelConfig; at the default MLP width that must be the
    very run `miras train --preset transformer` makes."""
    config = micro(data, tmp_path, steps=3, match_params=False, mqar_steps=0, niah_samples=0)
    [row] = compare(candidates_for(["transformer"]), config, tmp_path / "cmp", log=quiet)
    fresh = train(
        TrainConfig(
            preset="transformer",
            size="tiny",
            data=str(data),
            val_data=(str(data),),
            vocab_size=300,
            seq_len=32,
            batch_size=2,
            lr=config.lr,
            warmup_steps=config.warmup_steps,
            max_steps=3,
            max_minutes=-1,
            eval_every=-1,
            final_eval_tokens=128,
            sample_tokens=0,
            seed=0,
            threads=1,
            progress=False,
            cache_dir=str(tmp_path / "cache"),
            out_dir=str(tmp_path / "fresh"),
        )
    )
    assert row["lm"]["ppl"][str(data)]["ppl"] == fresh.val_ppl
    fresh_losses = [[r["step"], r["loss"]] for r in MetricsLog(fresh.run_dir).read() if r["event"] == "train"]
    assert row["lm"]["train_loss"] == fresh_losses


def test_a_failing_model_is_reported_and_the_others_finish(data, tmp_path, monkeypatch):
    real_train, real_mqar = compare_module.train, mqar_module.train_mqar

    def train_fails_for_moneta(config):
        if (config.resume or config.out_dir).endswith("moneta"):
            raise FloatingPointError("training loss is nan at step 1; try a lower --lr")
        return real_train(config)

    def mqar_fails_for_transformer(config, **kwargs):
        if config.preset == "transformer":
            raise RuntimeError("out of memory")
        return real_mqar(config, **kwargs)

    monkeypatch.setattr(compare_module, "train", train_fails_for_moneta)
    monkeypatch.setattr(mqar_module, "train_mqar", mqar_fails_for_transformer)
    out = tmp_path / "cmp"
    rows = compare(candidates_for(["moneta", "transformer"]), micro(data, tmp_path), out, log=quiet)
    moneta_row, transformer_row = rows
    assert set(moneta_row["errors"]) == {"lm"} and "nan" in moneta_row["errors"]["lm"]
    assert "mqar" in moneta_row and "niah" not in moneta_row  # MQAR does not need the LM; NIAH does
    assert set(transformer_row["errors"]) == {"mqar"} and "lm" in transformer_row and "niah" in transformer_row
    table = (out / "results.md").read_text()
    assert "## Failures" in table and "moneta, lm: FloatingPointError" in table
    assert "| moneta | failed |" in table

    monkeypatch.setattr(compare_module, "train", real_train)
    monkeypatch.setattr(mqar_module, "train_mqar", real_mqar)
    rows = compare(candidates_for(["moneta", "transformer"]), micro(data, tmp_path), out, log=quiet)
    assert [r["errors"] for r in rows] == [{}, {}]  # a rerun finishes what failed


def test_parameter_matching_of_the_default_models():
    configs = model_configs(candidates_for(DEFAULT_MODELS), CompareConfig(), vocab_size=8192)
    counts = {}
    for name, config in configs.items():
        with torch.device("meta"):
            counts[name] = MirasLM(config).num_parameters()
    assert {c.hidden_size for c in configs.values()} == {128}
    assert max(counts.values()) - min(counts.values()) <= 3 * 128 * 2, counts
    unmatched = model_configs(candidates_for(DEFAULT_MODELS), CompareConfig(match_params=False), vocab_size=8192)
    assert {c.intermediate_size for c in unmatched.values()} == {384}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(steps=0), "steps"),
        (dict(size="huge"), "size"),
        (dict(lr=float("nan")), "lr"),
        (dict(mqar_kv_pairs=32), "mqar_kv_pairs"),
        (dict(niah_variants=("essay",)), "niah_variants"),
        (dict(niah_depths=(1.5,)), "niah_depths"),
        (dict(vocab_size=100), "vocab_size"),
        (dict(threads=0), "threads"),
        (dict(device="tpu"), "device"),
    ],
)
def test_bad_budget_names_its_field(changes, field):
    with pytest.raises(ConfigError) as e:
        CompareConfig(**changes)
    assert e.value.field == field


def test_bad_candidates_and_data_fail_before_training(data, tmp_path):
    with pytest.raises(ConfigError, match="unknown model") as e:
        candidates_for(["moneta", "mamba3"])
    assert e.value.field == "models"
    with pytest.raises(ConfigError, match="unique"):
        compare([Candidate("a", "moneta"), Candidate("a", "yaad")], micro(data, tmp_path), tmp_path / "x", log=quiet)
    with pytest.raises(ConfigError) as e:
        missing = tmp_path / "missing.txt"
        compare(candidates_for(["moneta"]), micro(missing, tmp_path), tmp_path / "x", log=quiet)
    assert e.value.field == "data"
    assert not (tmp_path / "x").exists()


def test_ablation_candidates():
    p_points = ablation_candidates("moneta-p")
    assert [c.value for c in p_points] == [1.0, 1.5, 2.0, 2.8, 3.0, 3.2, 4.0]
    assert p_points[1].spec == moneta(p=1.5) and p_points[1].name == "moneta-p1.5" and p_points[1].label == "p = 1.5"
    assert [c.spec.q for c in ablation_candidates("moneta-q")] == [2.0, 3.0, 4.0, 5.0]
    with pytest.raises(ConfigError, match=r"p = 0.5 is not a valid Moneta") as e:
        ablation_candidates("moneta-p", [0.5, 2])
    assert e.value.field == "values"
    with pytest.raises(ConfigError, match=r"q = 1 is not a valid Moneta"):
        ablation_candidates("moneta-q", [1])
    with pytest.raises(ConfigError, match="fixed variants"):
        ablation_candidates("yaad", [2])
    with pytest.raises(ConfigError, match="duplicates"):
        ablation_candidates("moneta-q", [3, 3])


def test_every_yaad_variant_builds_and_runs():
    variants = ablation_candidates("yaad")
    assert [c.name for c in variants] == [name for name, *_ in YAAD_VARIANTS]
    for c in variants:
        config = ModelConfig.from_size(
            "tiny", preset=c.preset, spec=c.spec, vocab_size=64, hidden_size=32, chunk_size=8, **c.overrides
        )
        torch.manual_seed(0)
        logits = MirasLM(config)(torch.randint(0, 64, (1, 12))).logits
        assert torch.isfinite(logits).all(), c.name


def test_ablate_moneta_p_end_to_end(data, tmp_path, monkeypatch):
    out = tmp_path / "ablate"
    monkeypatch.chdir(data.parent)  # a relative validation set: rows and table keep the spelling given
    config = micro(data, tmp_path, mqar_steps=0, niah_samples=0, val_data=(data.name,))
    rows = ablate("moneta-p", config, out, [2, 3], log=quiet)
    assert [r["label"] for r in rows] == ["p = 2", "p = 3"] and all(r["errors"] == {} for r in rows)
    assert all(r["lm"]["ppl"][data.name]["ppl"] > 1 for r in rows)
    assert "mqar" not in rows[0] and "niah" not in rows[0]
    table = (out / "results.md").read_text()
    assert "# Ablation: Moneta's p" in table and "| p = 2 |" in table and "MQAR" not in table
    assert (out / "ablation.png").is_file() and (out / "loss.png").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"]["moneta-p2"]["model"]["spec"]["p"] == 2.0


def test_cli_compare_and_ablate(data, tmp_path, capsys):
    flags = [
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--seq-len",
        "32",
        "--data",
        str(data),
        "--val-data",
        str(data),
        "--vocab-size",
        "300",
        "--eval-tokens",
        "128",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--no-progress",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    out = tmp_path / "q"
    assert main(["ablate", "moneta-q", "--values", "4", "--out", str(out), *flags]) == 0
    printed = capsys.readouterr().out
    assert "| q = 4 |" in printed and (out / "ablation.png").is_file()

    assert main(["compare", "--steps", "0", "--out", str(tmp_path / "c")]) == 2
    assert "--steps: must be >= 1, got 0" in capsys.readouterr().err
    assert main(["compare", "--models", "mamba3", "--out", str(tmp_path / "c")]) == 2
    assert "--models: unknown model" in capsys.readouterr().err
    assert main(["ablate", "moneta-p", "--values", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "--values: p = 0.5" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
