import json

import pytest
import torch

from miras.cli import main
from miras.experiments import mqar as mqar_module
from miras.experiments.mqar import make_sweep, mqar_model_config, mqar_sweep, mqar_table, train_mqar
from miras.train import ConfigError


@pytest.fixture(autouse=True)
def one_thread():
    # The tests share 2 cores with other work; one thread keeps them from fighting over both.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_attention_solves_easy_mqar():
    """A 2-layer, 1-head attention model recalls every key of an easy MQAR setting (2 pairs in 16 tokens): ~10 s.

    Chance over the in-context values is 1/2, so 0.9 needs real recall; seeds 0-3 reach 0.94-0.97."""
    config = mqar_model_config("transformer", 64, vocab_size=64, seq_len=16)
    result = train_mqar(
        config, seq_len=16, num_kv_pairs=2, steps=400, batch_size=32, lr=1e-3, seed=0, test_examples=500
    )
    assert result.accuracy >= 0.9, result
    assert result.test_loss < 0.6
    assert result.model == "transformer" and result.width == 64 and result.steps == 400


@pytest.mark.slow
def test_attention_solves_mqar_with_four_pairs():
    """The same model on 4 pairs in 32 tokens, zoology's smallest kind of setting: ~30 s."""
    config = mqar_model_config("transformer", 64, vocab_size=64, seq_len=32)
    result = train_mqar(
        config, seq_len=32, num_kv_pairs=4, steps=600, batch_size=64, lr=1e-3, seed=0, test_examples=500
    )
    assert result.accuracy >= 0.9, result


def test_train_mqar_is_deterministic_and_json_safe():
    config = mqar_model_config("gated_deltanet", 16, vocab_size=32, seq_len=16, chunk_size=8)
    kwargs = dict(seq_len=16, num_kv_pairs=2, steps=3, batch_size=4, lr=1e-3, seed=3, test_examples=8)
    first, second = train_mqar(config, **kwargs), train_mqar(config, **kwargs)
    assert first.accuracy == second.accuracy and first.test_loss == second.test_loss
    assert 0.0 <= first.accuracy <= 1.0
    record = json.loads(json.dumps(first.to_dict()))
    assert record["num_kv_pairs"] == 2 and record["num_parameters"] > 0


def test_train_mqar_rejects_bad_arguments():
    config = mqar_model_config("transformer", 16, vocab_size=32, seq_len=16)
    with pytest.raises(ValueError, match="steps"):
        train_mqar(config, seq_len=16, num_kv_pairs=2, steps=0, batch_size=4, lr=1e-3, seed=0)
    with pytest.raises(ValueError, match="lr"):
        train_mqar(config, seq_len=16, num_kv_pairs=2, steps=1, batch_size=4, lr=0.0, seed=0)
    with pytest.raises(ValueError, match="seq_len"):  # the task's own check: 4 pairs do not fit in 8 tokens
        train_mqar(config, seq_len=8, num_kv_pairs=4, steps=1, batch_size=4, lr=1e-3, seed=0)


def tiny_sweep(**changes):
    kwargs = dict(
        models=["transformer", "gated_deltanet"],
        seq_lens=[16, 8],
        kv_pairs=[2, 4],
        widths=[16],
        lrs=[1e-3],
        steps=2,
        batch_size=4,
        vocab_size=32,
        test_examples=8,
    )
    kwargs.update(changes)
    return make_sweep(
        kwargs.pop("models"),
        kwargs.pop("seq_lens"),
        kwargs.pop("kv_pairs"),
        kwargs.pop("widths"),
        kwargs.pop("lrs"),
        **kwargs,
    )


def test_sweep_skips_impossible_settings_writes_report_and_resumes(tmp_path):
    sweep, skipped = tiny_sweep()
    assert sweep.settings == ((16, 2), (16, 4), (8, 2)) and skipped == [(8, 4)]
    lines = []
    records = mqar_sweep(sweep, tmp_path, log=lines.append)
    assert len(records) == 6 and len(lines) == 6
    assert all("accuracy" in r for r in records)
    saved = json.loads((tmp_path / "mqar.json").read_text())
    assert len(saved["runs"]) == 6 and saved["sweep"]["widths"] == [16]
    table = (tmp_path / "mqar.md").read_text()
    assert "| 16 | 4 | gated_deltanet |" in table and "d=16" in table
    for seq_len, kv in sweep.settings:
        assert (tmp_path / f"mqar-T{seq_len}-kv{kv}.png").is_file()

    again = []
    assert mqar_sweep(sweep, tmp_path, log=again.append) == records
    assert again == []  # nothing retrained

    other, _ = tiny_sweep(steps=3)
    with pytest.raises(ConfigError, match="another budget") as e:
        mqar_sweep(other, tmp_path)
    assert e.value.field == "out"


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = mqar_module.train_mqar

    def flaky(config, **kwargs):
        if config.preset == "gated_deltanet":
            raise FloatingPointError("MQAR training loss is nan at step 1; try a lower lr")
        return real(config, **kwargs)

    monkeypatch.setattr(mqar_module, "train_mqar", flaky)
    sweep, _ = tiny_sweep(seq_lens=[16], kv_pairs=[2])
    records = mqar_sweep(sweep, tmp_path, log=lambda _: None)
    failed = [r for r in records if "error" in r]
    assert [r["model"] for r in failed] == ["gated_deltanet"] and "nan" in failed[0]["error"]
    assert "| 16 | 2 | gated_deltanet | failed |" in mqar_table(records, sweep)
    assert "## Failed runs" in (tmp_path / "mqar.md").read_text()

    monkeypatch.setattr(mqar_module, "train_mqar", real)  # a rerun retries only the failed run
    records = mqar_sweep(sweep, tmp_path, log=lambda _: None)
    assert all("accuracy" in r for r in records)


def test_best_over_lrs_is_reported(tmp_path):
    sweep, _ = tiny_sweep(models=["transformer"], seq_lens=[16], kv_pairs=[2], lrs=[1e-3, 3e-3])
    records = mqar_sweep(sweep, tmp_path, log=lambda _: None)
    best = max(r["accuracy"] for r in records)
    assert f"| 16 | 2 | transformer | {100 * best:.1f} |" in mqar_table(records, sweep)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        (dict(models=["nope"]), "models", "unknown model"),
        (dict(seq_lens=[4], kv_pairs=[2]), "kv_pairs", "no combination fits"),
        (dict(widths=[18], num_heads=4), "widths", "not divisible"),
        (dict(lrs=[-1.0]), "lrs", "finite and > 0"),
        (dict(vocab_size=6), "vocab_size", "too small"),
        (dict(steps=0), "steps", ">= 1"),
        (dict(widths=[]), "widths", "at least one"),
    ],
)
def test_make_sweep_names_the_bad_argument(changes, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        tiny_sweep(**changes)
    assert e.value.field == field


def test_cli_runs_a_sweep_and_reports_bad_flags(tmp_path, capsys):
    out = tmp_path / "mqar"
    code = main(
        [
            "recall",
            "mqar",
            "--models",
            "transformer",
            "--seq-lens",
            "16",
            "--kv-pairs",
            "2",
            "--widths",
            "16",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--vocab-size",
            "32",
            "--test-examples",
            "8",
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "mqar.md").is_file() and (out / "mqar.json").is_file() and (out / "mqar-T16-kv2.png").is_file()
    assert "| 16 | 2 | transformer |" in capsys.readouterr().out

    assert main(["recall", "mqar", "--widths", "30", "--heads", "4", "--out", str(out)]) == 2
    assert "--widths: width 30" in capsys.readouterr().err
    assert main(["recall", "mqar", "--heads", "0", "--out", str(out)]) == 2
    assert "--heads" in capsys.readouterr().err
