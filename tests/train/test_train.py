import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from miras.config import ModelConfig  # noqa: E402
from miras.data import TokenBatches  # noqa: E402
from miras.models import MirasLM  # noqa: E402
from miras.presets import moneta  # noqa: E402
from miras.run.checkpoint import MODEL_FILE, load_trained  # noqa: E402
from miras.train import ConfigError, TrainConfig, load_checkpoint, resume_config, save_checkpoint, train  # noqa: E402
from miras.train.evaluation import eval_windows, unigram_log_probs  # noqa: E402
from miras.train.optim import WarmupCosine, param_groups  # noqa: E402

TINY = dict(hidden_size=32, num_heads=2, num_hidden_layers=1, chunk_size=16)


def grammar_text(seed: int = 0, sentences: int = 600) -> str:
    """~25 KB of sentences from a small grammar: structured enough that a few steps visibly lower the loss."""
    rng = random.Random(seed)
    nouns = ["nation", "congress", "people", "union", "treaty", "army", "law", "state", "citizen", "trade"]
    verbs = ["protects", "needs", "serves", "builds", "defends", "honors", "supports", "reviews"]
    adjs = ["great", "free", "strong", "new", "common", "public", "fair"]
    out = []
    for _ in range(sentences):
        out.append(f"The {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)}.")
    return " ".join(out) + "\n"


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text(grammar_text(), encoding="utf-8")
    return path


def tiny_config(tmp_path, data, **changes) -> TrainConfig:
    fields = dict(
        data=str(data),
        val_data=(str(data),),
        vocab_size=320,
        seq_len=32,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        max_steps=8,
        max_minutes=-1,
        log_every=1,
        eval_every=-1,
        eval_batches=2,
        final_eval_tokens=512,
        save_every=-1,
        sample_tokens=8,
        cache_dir=str(tmp_path / "cache"),
        out_dir=str(tmp_path / "run"),
        threads=1,
        progress=False,
        **TINY,
    )
    return TrainConfig(**{**fields, **changes})


def train_losses(run_dir) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["event"] == "train"]


def test_train_lowers_loss_and_writes_the_run_folder(tmp_path, data):
    result = train(tiny_config(tmp_path, data, max_steps=30, eval_every=15))
    run = result.run_dir
    losses = train_losses(run)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0, losses
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [0, 15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    final = records[-1]
    assert final["event"] == "final" and final["val_ppl"] == pytest.approx(result.val_ppl)
    assert result.val_ppl < result.unigram_ppl
    assert result.sample

    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["hidden_size"] == 32 and saved["model"]["hidden_size"] == 32
    assert saved["model"]["vocab_size"] == 320
    for name in ("loss.png", "tokenizer/tokenizer.json", "tokenizer/tokenizer_meta.json", "latest"):
        assert (run / name).is_file(), name
    assert (run / (run / "latest").read_text().strip() / MODEL_FILE).is_file()
    assert not (run / "checkpoint-tmp").exists()


def test_resume_continues_exactly(tmp_path, data, monkeypatch):
    # log_every 3 with a checkpoint at step 4: the record of step 6 averages steps 4-6 across the resume.
    full = train(tiny_config(tmp_path, data, out_dir=str(tmp_path / "full"), log_every=3))

    # Simulate a run killed during step 7 (0-based 6), after its checkpoint at step 4.
    original = TokenBatches.batch

    def batch_or_die(self, step):
        if step == 6:
            raise KeyboardInterrupt("killed")
        return original(self, step)

    monkeypatch.setattr(TokenBatches, "batch", batch_or_die)
    killed = tiny_config(tmp_path, data, out_dir=str(tmp_path / "killed"), save_every=4, log_every=3)
    with pytest.raises(KeyboardInterrupt):
        train(killed)
    monkeypatch.undo()
    assert (tmp_path / "killed" / "latest").read_text().strip() == "checkpoint-0000004"
    assert len(train_losses(tmp_path / "killed")) == 2  # steps 3 and 6

    resumed = train(TrainConfig(resume=str(tmp_path / "killed"), threads=1, progress=False))
    assert train_losses(tmp_path / "killed") == train_losses(full.run_dir)  # bit-exact, step by step
    assert resumed.evals == full.evals
    weights = [
        load_file(str(r / (r / "latest").read_text().strip() / MODEL_FILE)) for r in (full.run_dir, resumed.run_dir)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_time_budget_fixes_the_step_count(tmp_path, data):
    """max_minutes alone: the first steps' speed sets max_steps (logged as a "pace" event, kept in the checkpoint for a
    resume; config.json stays as given) and the cosine ends there."""
    result = train(tiny_config(tmp_path, data, max_steps=-1, max_minutes=0.1, eval_every=20))
    saved = json.loads((result.run_dir / "config.json").read_text())["train"]
    assert saved["max_steps"] == -1 and saved["max_minutes"] == 0.1
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    planned = [r["max_steps"] for r in records if r["event"] == "pace" and "max_steps" in r]
    assert planned and planned[-1] > 8 and result.step <= planned[-1]
    assert records[-1]["elapsed_s"] < 0.1 * 60 + 1.0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the thread probe needs two cores")
def test_the_thread_probe_is_logged_and_kept_for_a_resume(tmp_path, data):
    """threads 0: the first steps probe 1 thread against all cores; the choice goes to metrics.jsonl and the
    checkpoint (config.json keeps 0, as given), and a resumed run trains on it without probing again."""
    threads = torch.get_num_threads()
    try:
        first = train(tiny_config(tmp_path, data, threads=0, max_steps=10, save_every=10))
        records = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
        [pace] = [r for r in records if r["event"] == "pace"]
        assert json.loads((first.run_dir / "config.json").read_text())["train"]["threads"] == 0
        checkpoint = first.run_dir / (first.run_dir / "latest").read_text().strip()
        assert json.loads((checkpoint / "train_state.json").read_text())["counters"]["threads"] == pace["threads"]
        torch.set_num_threads(3 if pace["threads"] != 3 else 2)
        resumed = train(resume_config(first.run_dir, max_steps=12, progress=False))
        assert resumed.step == 12 and torch.get_num_threads() == pace["threads"]
        records = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["event"] for r in records].count("pace") == 1  # no second probe
    finally:
        torch.set_num_threads(threads)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    config = ModelConfig.from_size("tiny", vocab_size=300, **TINY)
    model = MirasLM(config)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3, betas=(0.9, 0.95))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(2, 10, 0.1))
    input_ids = torch.randint(0, 300, (2, 40))
    for _ in range(3):
        model(input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train": {}, "model": config.to_dict()}))
    save_checkpoint(run, model, optimizer, scheduler, {"step": 3, "tokens": 240, "elapsed_s": 1.5})

    torch.manual_seed(1)  # a differently initialized model
    fresh = MirasLM(config)
    # fused, as `miras train` builds it on CUDA, resuming a checkpoint an unfused optimizer wrote (`miras compare`'s
    # step-0 checkpoints are written on the CPU): the resuming optimizer's execution options stay
    fresh_optimizer = torch.optim.AdamW(param_groups(fresh, 0.1), lr=1e-3, betas=(0.9, 0.95), fused=True)
    fresh_scheduler = torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, WarmupCosine(2, None, 0.1))
    counters = load_checkpoint(run, fresh, fresh_optimizer, fresh_scheduler)
    assert counters == {"step": 3, "tokens": 240, "elapsed_s": 1.5}
    with torch.no_grad():
        assert torch.equal(fresh(input_ids).logits, model(input_ids).logits)
    assert fresh_scheduler.last_epoch == 3 and fresh_scheduler.lr_lambdas[0].total == 10
    assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    assert fresh_optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert [g["fused"] for g in fresh_optimizer.param_groups] == [True, True]
    assert [g["fused"] for g in optimizer.param_groups] == [None, None]
    for p, q in zip(model.parameters(), fresh.parameters()):
        a, b = optimizer.state[p], fresh_optimizer.state[q]
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    fresh(input_ids, labels=input_ids).loss.backward()
    fresh_optimizer.step()  # the fused update runs on the loaded state


def test_checkpoint_folder_has_no_pickles(tmp_path, data):
    """Only safetensors and JSON: loading a checkpoint can never run code."""
    result = train(tiny_config(tmp_path, data, max_steps=2))
    checkpoint = result.run_dir / (result.run_dir / "latest").read_text().strip()
    assert sorted(p.name for p in checkpoint.iterdir()) == [
        "model.safetensors",
        "train_state.json",
        "train_state.safetensors",
    ]
    model, tokenizer = load_trained(result.run_dir)
    assert not model.training and tokenizer.vocab_size == 320


def test_weight_decay_groups():
    model = MirasLM(ModelConfig.from_size("tiny", vocab_size=300, **TINY))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert all(p.ndim >= 2 for p in decay["params"])
    assert any("memory_init" in n for n in no_decay_names)
    assert any("gate" in n and n.endswith(("down.weight", "up.weight")) for n in no_decay_names)
    assert any("norm" in n for n in no_decay_names)
    assert "embed_tokens.weight" in {names[id(p)] for p in decay["params"]}
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedule_warms_up_then_decays_to_the_floor():
    schedule = WarmupCosine(warmup=4, total=20, min_ratio=0.1)
    values = [schedule(s) for s in range(25)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[4:], values[5:]))
    assert values[18] > 0.1 and values[19] == pytest.approx(0.1)  # the last of 20 steps (0-based 19) is at the floor
    assert values[24] == pytest.approx(0.1)
    assert WarmupCosine(4, None, 0.1)(100) == 1.0  # the length is not known yet


def test_eval_windows_spread_over_the_set():
    starts = eval_windows(num_tokens=1001, seq_len=10, max_tokens=30)
    assert starts.tolist() == [0, 330, 660]
    assert len(eval_windows(1001, 10, -1)) == 100
    with pytest.raises(ValueError, match="shorter than one window"):
        eval_windows(5, 10, -1)


def test_unigram_is_add_one_smoothed():
    log_probs = unigram_log_probs([0, 0, 1], vocab_size=3)
    assert torch.allclose(torch.tensor(log_probs).exp(), torch.tensor([3 / 6, 2 / 6, 1 / 6], dtype=torch.float64))


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(preset="monetta"), "preset"),
        (dict(size="huge"), "size"),
        (dict(lr=-1e-3), "lr"),
        (dict(data="/no/such/file.txt"), "data"),
        (dict(batch_size=0), "batch_size"),
        (dict(betas=(0.9, 1.5)), "betas"),
        (dict(max_steps=-1, max_minutes=-1), "max_steps"),
        (dict(tf32=True, device="cpu"), "tf32"),
        (dict(tf32="yes"), "tf32"),
    ],
)
def test_bad_config_names_the_field(changes, field):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**changes)
    assert info.value.field == field and str(info.value).startswith(field + ":")


def test_a_given_step_count_is_not_cut_by_the_default_time_budget():
    assert TrainConfig().max_minutes == -1 and TrainConfig().max_steps == 1000  # the library: a step count
    assert TrainConfig(max_steps=1000).max_minutes == -1  # a step count alone runs all its steps
    assert TrainConfig(max_steps=1000, max_minutes=2).max_minutes == 2  # both given: whichever ends first


def test_a_model_config_trains_as_given(tmp_path, data):
    """TrainConfig.model: any ModelConfig (here a MemorySpec the presets do not name) trains as given, with the
    tokenizer's vocabulary; config.json keeps it under "model", and its "train" names the model's preset."""
    spec = moneta(p=2.0)
    model = ModelConfig.from_size("tiny", preset="moneta", spec=spec, vocab_size=300, **TINY)
    result = train(tiny_config(tmp_path, data, model=model, max_steps=2))
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert ModelConfig.from_dict(saved["model"]) == dataclasses.replace(model, vocab_size=320)
    assert saved["train"]["preset"] == "moneta" and "model" not in saved["train"]
    with pytest.raises(ConfigError, match="^hidden_size: 64 disagrees with the given model's hidden_size=32"):
        TrainConfig(model=model, hidden_size=64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the device 'auto' picks must be the CPU")
def test_tf32_on_an_auto_device_that_is_the_cpu_is_refused(data, tmp_path):
    config = tiny_config(tmp_path, data, tf32=True)
    with pytest.raises(ConfigError, match="^tf32: TF32 matmuls are for CUDA GPUs"):
        train(config)
    assert not (tmp_path / "run").exists() and not torch.backends.cuda.matmul.allow_tf32


def test_resume_refuses_changes_that_alter_the_run(tmp_path, data):
    result = train(tiny_config(tmp_path, data, max_steps=2))
    with pytest.raises(ConfigError, match="cannot change a resumed run's lr"):
        resume_config(result.run_dir, lr=0.5)
    config = resume_config(result.run_dir, max_steps=4, lr=1e-2)  # lr as saved: allowed
    assert config.max_steps == 4 and config.resume == str(result.run_dir)


def test_resume_with_more_steps_extends_the_run(tmp_path, data):
    short = train(tiny_config(tmp_path, data, max_steps=4, save_every=4))
    extended = train(resume_config(short.run_dir, max_steps=6, threads=1, progress=False))
    assert extended.step == 6
    assert json.loads((short.run_dir / "config.json").read_text())["train"]["max_steps"] == 6  # what the run did
    assert len(train_losses(short.run_dir)) == 6
    records = [json.loads(line) for line in (short.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "final" for r in records) == 1


def test_paths_are_saved_absolute_so_a_run_resumes_from_anywhere(tmp_path, data, monkeypatch):
    """Relative --data, --val-data (another spelling of the same file: still its held-out part), --cache-dir and
    --out-dir: saved absolute, so the run resumes from another working directory."""
    monkeypatch.chdir(tmp_path)
    config = tiny_config(
        tmp_path, "data.txt", val_data=("./data.txt",), cache_dir="cache", out_dir="run", max_steps=2, save_every=2
    )
    assert (config.data, config.val_data, config.cache_dir) == (str(data), (str(data),), str(tmp_path / "cache"))
    result = train(config)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert (saved["data"], saved["out_dir"]) == (str(data), str(tmp_path / "run"))
    assert train(resume_config("run", max_steps=3)).step == 3  # resumed by a relative path
    monkeypatch.chdir("/")
    assert train(resume_config(tmp_path / "run", max_steps=4)).step == 4  # and again, from elsewhere
    assert result.val_ppl > 0


def test_ctrl_c_finishes_the_step_saves_and_stops(tmp_path, data, monkeypatch):
    """SIGINT in the middle of step 3: that step completes, its checkpoint is saved, train raises KeyboardInterrupt
    (the CLI exits 130) and a resume continues from step 3; the handler is gone afterwards."""
    import signal

    import miras.train.loop as loop

    calls = []

    def interrupted_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*args, **kwargs)

    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", interrupted_step)
    # The handler found at start, not necessarily Python's default: a process started in the background or under
    # nohup by a non-interactive shell begins with SIGINT ignored.
    at_start = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(tmp_path, data, max_steps=8))
    assert signal.getsignal(signal.SIGINT) is at_start
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-0000003"
    monkeypatch.setattr(loop, "train_step", real_step)
    assert train(resume_config(tmp_path / "run")).step == 8
