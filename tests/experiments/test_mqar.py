import dataclasses
import json
import os
import shutil

import pytest
import torch

from miras.cli import main
from miras.experiments import mqar as mqar_module
from miras.experiments.mqar import (
    make_sweep,
    median_curve,
    mqar_model_config,
    mqar_sweep,
    mqar_table,
    summarize,
    train_mqar,
)
from miras.train import ConfigError, TrainConfig, train
from miras.train.mqar_task import MQARTask


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
        config, seq_len=16, num_kv_pairs=2, steps=400, batch_size=32, lr=1e-3, seed=0, test_examples=500, threads=1
    )
    assert result.accuracy >= 0.9, result
    assert result.test_loss < 0.6
    assert result.model == "transformer" and result.width == 64 and result.steps == 400
    steps = [step for step, _ in result.curve]  # a learning curve: step 0 and every tenth of the run
    assert steps == list(range(0, 401, 40)) and result.curve[-1][1] == result.accuracy
    assert result.curve[0][1] < 0.5 < result.accuracy


@pytest.mark.slow
def test_attention_solves_mqar_with_four_pairs():
    """The same model on 4 pairs in 32 tokens, zoology's smallest kind of setting: ~30 s."""
    config = mqar_model_config("transformer", 64, vocab_size=64, seq_len=32)
    result = train_mqar(
        config, seq_len=32, num_kv_pairs=4, steps=600, batch_size=64, lr=1e-3, seed=0, test_examples=500, threads=1
    )
    assert result.accuracy >= 0.9, result


def test_named_variants_are_the_designs_they_name():
    """A sweep runs the named variants beside the presets: gated DeltaNet's per-chunk approximation at chunk 16, the
    per-chunk MLP presets at chunk 16, Moneta at p = 2 or q = 2, Yaad with the l2 bias, Yaad's old δ start and Huber
    forms; each is its preset with exactly those changes."""
    sweep, _ = make_sweep(
        ["gated_deltanet", *mqar_module.VARIANTS], [32], [4], [16], [1e-3], steps=2, batch_size=2, seeds=(0,)
    )
    exact = sweep.model_config("gated_deltanet", 16, 32)
    approx = sweep.model_config("gated_deltanet_per_chunk16", 16, 32)
    assert exact.memory_spec.gradients == "per_token" and exact.chunk_size == 64
    assert approx.preset == "gated_deltanet" and approx.chunk_size == 16
    assert approx.memory_spec == dataclasses.replace(exact.memory_spec, gradients="per_chunk")
    for name in ("moneta", "yaad", "memora"):
        base, variant = sweep.model_config(name, 16, 32), sweep.model_config(f"{name}_chunk16", 16, 32)
        assert variant.memory_spec == base.memory_spec and (base.chunk_size, variant.chunk_size) == (64, 16)
    moneta, yaad = sweep.model_config("moneta", 16, 32).memory_spec, sweep.model_config("yaad", 16, 32).memory_spec
    assert sweep.model_config("moneta_p2", 16, 32).memory_spec == dataclasses.replace(moneta, p=2.0)
    assert sweep.model_config("moneta_q2", 16, 32).memory_spec == dataclasses.replace(moneta, q=2.0)
    assert sweep.model_config("yaad_l2", 16, 32).memory_spec == dataclasses.replace(yaad, bias="l2")
    # Yaad's δ start: 2·√head_dim by default, 1 (the start before issue 23) in the yaad_delta1 family
    assert sweep.model_config("yaad", 16, 32).delta_init is None  # the layer's 2·√head_dim
    assert sweep.model_config("yaad_delta1", 16, 32).delta_init == 1.0
    for form in ("norm", "coordinate"):
        variant = sweep.model_config(f"yaad_delta1_huber_{form}", 16, 32)
        assert variant.memory_spec == dataclasses.replace(yaad, huber_form=form) and variant.delta_init == 1.0
    with pytest.raises(ConfigError, match="models"):
        make_sweep(["gated_deltanet_chunk7"], [32], [4], [16], [1e-3], steps=2, batch_size=2)


def test_train_mqar_is_deterministic_and_json_safe():
    config = mqar_model_config("gated_deltanet", 16, vocab_size=32, seq_len=16, chunk_size=8)
    kwargs = dict(seq_len=16, num_kv_pairs=2, steps=3, batch_size=4, lr=1e-3, seed=3, test_examples=8, threads=1)
    first, second = train_mqar(config, **kwargs), train_mqar(config, **kwargs)
    assert first.accuracy == second.accuracy and first.test_loss == second.test_loss
    assert first.curve == second.curve and first.train_loss == second.train_loss
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


def mqar_config(tmp_path, **changes) -> TrainConfig:
    fields = dict(
        model=mqar_model_config("gated_deltanet", 16, vocab_size=32, seq_len=16, chunk_size=8),
        data="mqar",
        vocab_size=32,
        seq_len=16,
        mqar_kv_pairs=2,
        mqar_test_examples=16,
        batch_size=4,
        warmup_steps=1,
        max_steps=8,
        log_every=2,
        eval_every=4,
        save_every=-1,
        sample_tokens=0,
        out_dir=str(tmp_path / "run"),
        threads=1,
        progress=False,
    )
    return TrainConfig(**{**fields, **changes})


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_mqar_run_trains_through_train_into_a_run_folder(tmp_path):
    result = train(mqar_config(tmp_path))
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["train"]["data"] == "mqar" and saved["train"]["mqar_kv_pairs"] == 2
    assert saved["model"]["vocab_size"] == 32 and saved["model"]["preset"] == "gated_deltanet"
    assert not (result.run_dir / "tokenizer").exists()  # the task is rebuilt from the config
    assert (result.run_dir / "latest").is_file() and (result.run_dir / "loss.png").is_file()
    evals = [r for r in records(result.run_dir) if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["val_loss"] > 0 for r in evals)
    final = records(result.run_dir)[-1]
    assert final["event"] == "final" and final["accuracy"] == evals[-1]["accuracy"] == result.accuracy
    assert result.evals["mqar"]["examples"] == 16 and result.sample == ""


def test_mqar_batches_walk_seeded_epochs():
    """Each epoch is one seeded permutation of the training set (the tail batch dropped); any batch can be drawn in
    any order, as a resumed run does."""
    task = MQARTask(mqar_config_fields(mqar_train_examples=10, batch_size=4))
    assert task.per_epoch == 2
    order = torch.Generator().manual_seed(0)
    perms = [torch.randperm(10, generator=order) for _ in range(3)]
    late = task.batch(5)  # epoch 2, second batch, before any other
    assert torch.equal(late[0], task.data.train.inputs[perms[2][4:8]])
    for index in range(6):
        epoch, i = divmod(index, 2)
        inputs, labels = task.batch(index)
        assert torch.equal(inputs, task.data.train.inputs[perms[epoch][4 * i : 4 * i + 4]])
        assert torch.equal(labels, task.data.train.labels[perms[epoch][4 * i : 4 * i + 4]])


def mqar_config_fields(**changes) -> TrainConfig:
    fields = dict(data="mqar", vocab_size=32, seq_len=16, mqar_kv_pairs=2, mqar_test_examples=8, threads=1)
    return TrainConfig(**{**fields, **changes})


def test_an_interrupted_mqar_run_resumes_exactly(tmp_path, monkeypatch):
    full = train(mqar_config(tmp_path, out_dir=str(tmp_path / "full")))

    original = MQARTask.batch

    def batch_or_die(self, index):
        if index == 6:
            raise KeyboardInterrupt("killed")
        return original(self, index)

    monkeypatch.setattr(MQARTask, "batch", batch_or_die)
    with pytest.raises(KeyboardInterrupt):
        train(mqar_config(tmp_path, out_dir=str(tmp_path / "killed"), save_every=4))
    monkeypatch.undo()
    assert (tmp_path / "killed" / "latest").read_text().strip() == "checkpoint-0000004"
    resumed = train(TrainConfig(resume=str(tmp_path / "killed"), threads=1, progress=False))
    assert resumed.step == 8 and resumed.evals == full.evals  # the same final accuracy and loss

    def curve(run_dir):  # every record's step, losses and accuracy (not its timing), bit-exact
        return [(r["event"], r["step"], r.get("loss"), r.get("val_loss"), r.get("accuracy")) for r in records(run_dir)]

    assert curve(resumed.run_dir) == curve(full.run_dir)


def test_train_mqar_continues_a_run_folder_it_finds(tmp_path):
    config = mqar_model_config("transformer", 16, vocab_size=32, seq_len=16)
    kwargs = dict(seq_len=16, num_kv_pairs=2, steps=4, batch_size=4, lr=1e-3, seed=0, test_examples=8, threads=1)
    first = train_mqar(config, run_dir=tmp_path / "run", **kwargs)
    metrics = (tmp_path / "run" / "metrics.jsonl").read_bytes()
    again = train_mqar(config, run_dir=tmp_path / "run", **kwargs)  # finished: read, nothing trained or evaluated
    assert again == first and (tmp_path / "run" / "metrics.jsonl").read_bytes() == metrics
    with pytest.raises(ConfigError) as e:  # the folder holds another run: named, not silently reported
        train_mqar(config, run_dir=tmp_path / "run", **{**kwargs, "lr": 3e-3})
    assert e.value.field == "lr"
    (tmp_path / "run" / "latest").unlink()  # as if killed before its only save: trained again from scratch
    assert train_mqar(config, run_dir=tmp_path / "run", **kwargs).accuracy == first.accuracy


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (dict(mqar_kv_pairs=5), "mqar_kv_pairs"),  # 4 * 5 > seq_len 16
        (dict(mqar_kv_pairs=0), "mqar_kv_pairs"),
        (dict(vocab_size=5), "vocab_size"),  # 2 pairs need 6
        (dict(vocab_size=64), "vocab_size"),  # not the model's 32
        (dict(mqar_train_examples=2), "mqar_train_examples"),  # fewer than a batch
        (dict(mqar_test_examples=0), "mqar_test_examples"),
        (dict(mqar_power_a=0.0), "mqar_power_a"),
        (dict(val_data=("sotu",)), "val_data"),
    ],
)
def test_bad_mqar_fields_name_the_field(tmp_path, changes, field):
    with pytest.raises(ConfigError) as e:
        mqar_config(tmp_path, **changes)
    assert e.value.field == field


def test_the_library_does_not_probe_threads_unless_asked(tmp_path):
    """threads -1 (TrainConfig's default): all the cores this process may use, set once; no probe, no "pace" event.
    threads 0 asks for the probe (what `miras train` passes)."""
    threads = torch.get_num_threads()
    try:
        result = train(mqar_config(tmp_path, threads=-1))
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        assert all(r["event"] != "pace" for r in records(result.run_dir))
    finally:
        torch.set_num_threads(threads)


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
        seeds=[0],
        threads=1,
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
    assert all(r["seed"] == 0 and r["curve"][0][0] == 0 for r in saved["runs"])
    run_dir = tmp_path / saved["runs"][0]["run_dir"]
    assert run_dir.name == "transformer-w16-T16-kv2-lr0.001-s0" and (run_dir / "metrics.jsonl").is_file()
    table = (tmp_path / "mqar.md").read_text()
    assert "| 16 | 4 | gated_deltanet |" in table and "d=16" in table
    # the state sizes beside it: full attention keeps K and V of every token (2 layers x 2 x 16 tokens x width 16)
    assert "## State size" in table and "| 16 | 2 | transformer | 1,024 |" in table
    assert "| 8 | 2 | transformer | 512 |" in table
    for seq_len, kv in sweep.settings:
        for figure in ("", "-state", "-curves"):
            assert (tmp_path / f"mqar-T{seq_len}-kv{kv}{figure}.png").is_file()

    again = []
    assert mqar_sweep(sweep, tmp_path, log=again.append) == records
    assert again == []  # nothing retrained

    more, _ = tiny_sweep(seeds=[0, 1])  # another seed: only its runs train
    lines = []
    assert mqar_sweep(more, tmp_path, log=lines.append)[:6] == records
    assert len(lines) == 6 and all("seed 1" in line for line in lines)

    # A smaller grid into the same folder (one setting, one seed, after all) loses nothing: the file and the report
    # still hold every run of this budget, and nothing trains again.
    lines = []
    part, _ = tiny_sweep(seq_lens=[16], kv_pairs=[4], seeds=[0])
    assert len(mqar_sweep(part, tmp_path, log=lines.append)) == 2 and lines == []
    saved = json.loads((tmp_path / "mqar.json").read_text())
    assert len(saved["runs"]) == 12 and saved["sweep"]["seeds"] == [0, 1]
    assert saved["sweep"]["settings"] == [[16, 2], [16, 4], [8, 2]]  # the folder's order first
    table = (tmp_path / "mqar.md").read_text()
    assert "| 8 | 2 | transformer |" in table and "2/2 seeds" in table
    # The report covers the folder's planned grid even where nothing of it has run: a width planned in mqar.json
    # stays a column, its cells empty.
    saved["sweep"]["widths"] = [16, 32]
    (tmp_path / "mqar.json").write_text(json.dumps(saved))
    assert len(mqar_sweep(part, tmp_path, log=lines.append)) == 2 and lines == []
    assert json.loads((tmp_path / "mqar.json").read_text())["sweep"]["widths"] == [16, 32]
    table = (tmp_path / "mqar.md").read_text()
    assert "| d=16 | d=32 |" in table and "| 16 | 4 | transformer | " in table
    # ... and a run outside every grid so far (another model, from its record alone, its run folder gone) is kept too
    moneta, _ = tiny_sweep(models=["moneta"], seq_lens=[16], kv_pairs=[2], seeds=[0])
    mqar_sweep(moneta, tmp_path, log=lambda _: None)
    shutil.rmtree(tmp_path / "runs")
    lines = []
    assert len(mqar_sweep(more, tmp_path, log=lines.append)) == 12 and lines == []
    saved = json.loads((tmp_path / "mqar.json").read_text())
    assert len(saved["runs"]) == 13 and saved["sweep"]["models"] == ["transformer", "gated_deltanet", "moneta"]

    other, _ = tiny_sweep(steps=3)
    with pytest.raises(ConfigError, match="another budget") as e:
        mqar_sweep(other, tmp_path)
    assert e.value.field == "out"


def test_a_sweep_run_in_parts_is_collected_without_training(tmp_path, monkeypatch):
    """Parts of a sweep run in separate folders (one per seed); their run folders copied into one folder, the whole
    sweep with train_missing=False reports what finished from the folders alone (nothing trained, evaluated or
    written into them) and leaves the rest out."""
    part0, part1, merged = tmp_path / "s0", tmp_path / "s1", tmp_path / "all"
    records0 = mqar_sweep(tiny_sweep(seeds=[0])[0], part0, log=lambda _: None)
    records1 = mqar_sweep(tiny_sweep(seeds=[1])[0], part1, log=lambda _: None)
    (merged / "runs").mkdir(parents=True)
    for part in (part0, part1):
        for run in (part / "runs").iterdir():
            if "gated_deltanet" not in run.name or "s1" not in run.name:  # one model's seed 1 never ran
                shutil.copytree(run, merged / "runs" / run.name)
    metrics = {run.name: (run / "metrics.jsonl").read_bytes() for run in (merged / "runs").iterdir()}
    lines = []
    whole, _ = tiny_sweep(seeds=[0, 1, 2])
    monkeypatch.setattr(mqar_module, "train", lambda *a, **k: pytest.fail("collecting trained or evaluated a run"))
    collected = mqar_sweep(whole, merged, log=lines.append, train_missing=False)
    expected = records0 + [r for r in records1 if r["model"] != "gated_deltanet"]
    key = lambda r: (r["model"], r["seq_len"], r["num_kv_pairs"], r["seed"])  # noqa: E731
    assert sorted(map(key, collected)) == sorted(map(key, expected))
    by_key = {key(r): r for r in collected}
    for r in expected:  # the same accuracy, curve and training time as where it ran
        got = by_key[key(r)]
        assert (got["accuracy"], got["curve"]) == (r["accuracy"], r["curve"])
        assert got["seconds"] == r["seconds"]
    assert metrics == {run.name: (run / "metrics.jsonl").read_bytes() for run in (merged / "runs").iterdir()}
    assert sum("not run" in line for line in lines) == len(whole.runs()) - len(expected)
    assert not any((merged / "runs" / name).exists() for name in ("transformer-w16-T16-kv2-lr0.001-s2",))
    with pytest.raises(ConfigError, match="folder"):
        mqar_sweep(whole, None, train_missing=False)


def test_runs_trained_in_worker_processes_give_the_same_records(tmp_path):
    """jobs=2 trains two runs at once in spawned processes; each run is deterministic, so the records (accuracy,
    curve, losses) are those of jobs=1, in the grid's order, and the file is written by this process alone."""
    sweep, _ = tiny_sweep(seq_lens=[16], kv_pairs=[2], seeds=[0, 1])
    one = mqar_sweep(sweep, tmp_path / "one", log=lambda _: None)
    lines = []
    two = mqar_sweep(sweep, tmp_path / "two", log=lines.append, jobs=2)
    keep = ("model", "seed", "accuracy", "test_loss", "train_loss", "curve", "run_dir")
    assert [{k: r[k] for k in keep} for r in two] == [{k: r[k] for k in keep} for r in one]
    assert len(lines) == 4 and all("accuracy" in line for line in lines)
    assert len(json.loads((tmp_path / "two" / "mqar.json").read_text())["runs"]) == 4
    with pytest.raises(ConfigError, match="jobs") as e:
        mqar_sweep(sweep, tmp_path / "three", jobs=0)
    assert e.value.field == "jobs"


def test_a_file_from_before_seeds_is_refused(tmp_path):
    sweep, _ = tiny_sweep()
    old = {k: v for k, v in mqar_module._sweep_dict(sweep).items() if k not in ("seeds", "curve_points")}
    (tmp_path / "mqar.json").write_text(json.dumps({"sweep": {**old, "seed": 0}, "runs": []}))
    with pytest.raises(ConfigError, match="another budget"):
        mqar_sweep(sweep, tmp_path)


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


def record(lr, seed, accuracy):
    curve = [[0, 0.0], [10, accuracy]]
    return dict(model="m", width=16, seq_len=16, num_kv_pairs=2, lr=lr, seed=seed, accuracy=accuracy, curve=curve)


def test_the_table_shows_the_median_over_seeds_at_the_lr_with_the_best_median():
    sweep, _ = tiny_sweep(models=["transformer"], seq_lens=[16], kv_pairs=[2], lrs=[1e-3, 3e-3], seeds=[0, 1, 2])
    sweep = mqar_module.MQARSweep(**{**sweep.__dict__, "models": ("m",)})
    # lr 1e-3: median 0.9 over 0.2, 0.9, 0.95; lr 3e-3: median 0.85, so 1e-3 wins, shown with its seeds' range
    runs = [record(1e-3, s, a) for s, a in enumerate((0.2, 0.9, 0.95))]
    runs += [record(3e-3, s, a) for s, a in enumerate((0.8, 0.85, 0.94))]
    point = summarize(runs)[("m", 16, 2, 16)]
    assert point["lr"] == 1e-3 and point["median"] == 0.9 and (point["min"], point["max"]) == (0.2, 0.95)
    assert "| 16 | 2 | m | 90.0 (20.0–95.0, 3/3 seeds, lr 0.001) |" in mqar_table(runs, sweep)
    # a higher median at the other lr wins even with a lower best seed; a seed not run yet is counted as missing
    runs = [record(1e-3, 0, 0.99), record(1e-3, 1, 0.1)] + [record(3e-3, s, 0.6) for s in range(3)]
    assert summarize(runs)[("m", 16, 2, 16)]["lr"] == 3e-3
    assert "| 60.0 (60.0–60.0, 3/3 seeds, lr 0.003) |" in mqar_table(runs, sweep)
    assert "54.5 (10.0–99.0, 2/3 seeds" in mqar_table(runs[:2], sweep)
    # a rate run on fewer seeds does not outrank one run on more: one seed's 0.99 loses to three seeds' median 0.5,
    # as a grid run on seed 0 and then on seeds 1-2 at its best rate reports that rate
    runs = [record(1e-3, 0, 0.99)] + [record(3e-3, s, a) for s, a in enumerate((0.9, 0.5, 0.4))]
    assert summarize(runs)[("m", 16, 2, 16)]["lr"] == 3e-3
    assert summarize(runs[:2])[("m", 16, 2, 16)]["lr"] == 1e-3
    assert median_curve([[[0, 0.0], [10, 0.5]], [[0, 0.2], [10, 1.0]], [[0, 0.1]]]) == [(0, 0.1), (10, 0.75)]
    # a report over runs of several commands lists rates and seeds in order, whichever command ran first
    part = dataclasses.replace(sweep, lrs=(3e-3,), seeds=(1, 2))
    grown = mqar_module.covering_sweep(part, [record(1e-3, 0, 0.5)])
    assert grown.lrs == (1e-3, 3e-3) and grown.seeds == (0, 1, 2)


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
            "--seeds",
            "0",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert (out / "runs" / "transformer-w16-T16-kv2-lr0.001-s1" / "config.json").is_file()
    assert (out / "mqar.md").is_file() and (out / "mqar.json").is_file() and (out / "mqar-T16-kv2.png").is_file()
    assert "| 16 | 2 | transformer |" in capsys.readouterr().out

    assert main(["recall", "mqar", "--widths", "30", "--heads", "4", "--out", str(out)]) == 2
    assert "--widths: width 30" in capsys.readouterr().err
    assert main(["recall", "mqar", "--heads", "0", "--out", str(out)]) == 2
    assert "--heads" in capsys.readouterr().err


def test_miras_train_runs_mqar_from_the_command_line(tmp_path, capsys):
    flags = "--data mqar --preset transformer --hidden-size 16 --num-hidden-layers 1 --num-heads 1 --seq-len 16"
    flags += " --vocab-size 32 --mqar-kv-pairs 2 --mqar-test-examples 8 --max-steps 4 --batch-size 4 --threads 1"
    assert main(["train", *flags.split(), "--no-progress", "--out-dir", str(tmp_path / "run")]) == 0
    assert "MQAR test accuracy" in capsys.readouterr().out
    assert main(["train", *flags.replace("--mqar-kv-pairs 2", "--mqar-kv-pairs 5").split()]) == 2
    assert "--mqar-kv-pairs" in capsys.readouterr().err
