import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import dataclasses  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from miras.cli import main  # noqa: E402
from miras.cli.train import GROUPS  # noqa: E402
from miras.train import TrainConfig  # noqa: E402
from tests.train.test_train import grammar_text  # noqa: E402

TINY_FLAGS = [
    "--hidden-size",
    "32",
    "--num-heads",
    "2",
    "--num-hidden-layers",
    "1",
    "--chunk-size",
    "16",
    "--vocab-size",
    "320",
    "--seq-len",
    "32",
    "--batch-size",
    "4",
    "--lr",
    "1e-2",
    "--warmup-steps",
    "2",
    "--max-minutes",
    "-1",
    "--eval-every",
    "-1",
    "--final-eval-tokens",
    "256",
    "--sample-tokens",
    "4",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The folder of a 4-step run trained through the CLI."""
    root = tmp_path_factory.mktemp("cli")
    data = root / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    run = root / "run"
    args = [
        "train",
        "--data",
        str(data),
        "--val-data",
        str(data),
        "--max-steps",
        "4",
        "--out-dir",
        str(run),
        "--cache-dir",
        str(root / "cache"),
        *TINY_FLAGS,
    ]
    assert main(args) == 0
    return run


def test_train_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "model"]  # model: a ModelConfig, no flag
    assert sorted(name for group in GROUPS.values() for name in group) == sorted(fields)
    for name in fields:
        assert "--" + name.replace("_", "-") in out


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "miras.train", "--help"], capture_output=True, text=True, check=True)
    assert "--max-minutes" in out.stdout and "usage: miras train" in out.stdout


def test_package_entry_point():
    """`python -m miras COMMAND`: every command without the installed script (a checkout on PYTHONPATH)."""
    out = subprocess.run([sys.executable, "-m", "miras", "bench", "--help"], capture_output=True, text=True, check=True)
    assert "usage: miras bench" in out.stdout and "--dtype" in out.stdout


def test_cli_train_writes_a_run(tiny_run):
    run = tiny_run
    assert (run / "latest").read_text().strip() == "checkpoint-0000004"
    assert '"event": "final"' in (run / "metrics.jsonl").read_text()


def test_generate_produces_text(tiny_run, capsys):
    run = tiny_run
    assert main(["generate", "--checkpoint", str(run), "--prompt", "The free", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("The free") and len(out.strip()) > len("The free")
    # Same seed, same text; a checkpoint folder works as well as its run folder.
    checkpoint = run / "checkpoint-0000004"
    assert main(["generate", "--checkpoint", str(checkpoint), "--prompt", "The free", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == out


# Bad flags and bad --data, each with the one line it must give; "{tmp}" is the test's folder, which holds the files
# made by _bad_data_files.
BAD_INPUT = [
    (["--preset", "monetta"], "--preset: 'monetta' is not one of moneta"),
    (["--size", "huge"], "--size: 'huge' is not one of tiny"),
    (["--lr", "-0.001"], "--lr: must be > 0, got -0.001"),
    (["--max-skipped-steps", "-1"], "--max-skipped-steps: must be >= 0, got -1"),
    (["--tokenizer", "sentencepiece"], "--tokenizer: 'sentencepiece' is not one of bpe, gpt2"),
    (["--max-steps", "-1", "--max-minutes", "-1"], "--max-steps: set max_steps or max_minutes"),
    (["--data", "/no/such/file.txt"], "--data: /no/such/file.txt: no such file or folder"),
    (["--data", "{tmp}/empty.txt"], "{tmp}/empty.txt: file is empty"),
    (["--data", "{tmp}/binary.txt"], "{tmp}/binary.txt: binary file (NUL byte at byte offset 3); expected UTF-8 text"),
    (["--data", "{tmp}/latin1.txt"], "{tmp}/latin1.txt: not valid UTF-8 at byte offset 21"),
    (["--data", "{tmp}/no_text"], "--data: {tmp}/no_text: folder has no .txt or .jsonl files"),
    (["--data", "{tmp}/no_text/*.txt"], "--data: {tmp}/no_text/*.txt: glob matches no files"),
    (["--val-data", "{tmp}/missing.txt"], "--val-data: {tmp}/missing.txt: no such file or folder"),
]


def _bad_data_files(folder) -> None:
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(b"abc\x00\x01\x02 and more")
    (folder / "latin1.txt").write_bytes("Plain start, then caf\u00e9".encode("latin-1"))
    (folder / "no_text").mkdir()
    (folder / "no_text" / "notes.md").write_text("not a training file")


@pytest.mark.parametrize("flags, message", BAD_INPUT, ids=[" ".join(flags) for flags, _ in BAD_INPUT])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, flags, message, capsys):
    """One line naming the flag or the file, exit 2, no traceback, and no half-made run folder."""
    _bad_data_files(tmp_path)
    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    args = [
        "train",
        "--data",
        str(data),
        "--max-steps",
        "4",
        "--out-dir",
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY_FLAGS,
        *(flag.replace("{tmp}", str(tmp_path)) for flag in flags),
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("miras train: error: ") and message.replace("{tmp}", str(tmp_path)) in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "run").exists()


def test_resume_without_checkpoint(tmp_path, tiny_run, capsys):
    run = tiny_run
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "not a run folder (no config.json)" in capsys.readouterr().err

    started = tmp_path / "started"  # a run killed before its first save: config.json, no checkpoint
    started.mkdir()
    (started / "config.json").write_text((run / "config.json").read_text())
    assert main(["train", "--resume", str(started)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_resume_rejects_other_flags(tiny_run, capsys):
    run = tiny_run
    assert main(["train", "--resume", str(run), "--lr", "0.5"]) == 2
    assert "--lr: cannot change a resumed run's lr" in capsys.readouterr().err


def test_generate_on_a_missing_run(tmp_path, capsys):
    assert main(["generate", "--checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such run or checkpoint folder" in capsys.readouterr().err


def _damaged(tiny_run, tmp_path, damage) -> str:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    damage(run, run / (run / "latest").read_text().strip())
    return str(run)


@pytest.mark.parametrize(
    "command, damage, message",
    [
        ("generate", lambda run, ckpt: os.truncate(ckpt / "model.safetensors", 100), "not a readable safetensors file"),
        (
            "resume",
            lambda run, ckpt: os.truncate(ckpt / "model.safetensors", 100),
            "model.safetensors: not a readable safetensors file",
        ),
        ("generate", lambda run, ckpt: shutil.rmtree(run / "tokenizer"), "no tokenizer/ folder"),
        ("generate", lambda run, ckpt: (run / "config.json").write_text("{bad"), "config.json: not valid JSON"),
        (
            "generate",
            lambda run, ckpt: (run / "config.json").write_text('{"model": {"bogus": 1}}'),
            "config.json: no valid model config",
        ),
        (
            "generate",
            lambda run, ckpt: (run / "config.json").write_text('{"model_type": "miras"}'),
            "a Hugging Face folder, not a run folder; load it with transformers, or convert it first",
        ),
        (
            "resume",
            lambda run, ckpt: (ckpt / "train_state.json").unlink(),
            "no training state (train_state.json missing)",
        ),
        ("resume", lambda run, ckpt: os.truncate(ckpt / "train_state.safetensors", 100), "unreadable training state"),
    ],
)
def test_damaged_run_folders_are_named(tiny_run, tmp_path, capsys, command, damage, message):
    """A damaged or foreign folder gives one line naming the file, exit 2, no traceback; the folder is kept."""
    run = _damaged(tiny_run, tmp_path, damage)
    before = sorted(p.relative_to(run) for p in Path(run).rglob("*") if p.name != "train.lock")
    args = (
        ["generate", "--checkpoint", run, "--max-new-tokens", "2"]
        if command == "generate"
        else ["train", "--resume", run]
    )
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.relative_to(run) for p in Path(run).rglob("*") if p.name != "train.lock") == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_generate_on_cuda_without_cuda_is_refused(tiny_run, capsys):
    assert main(["generate", "--checkpoint", str(tiny_run), "--device", "cuda"]) == 2
    assert "--device: cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err


def test_an_output_path_that_is_a_file_is_named(tmp_path, tiny_run, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    args = ["train", "--data", str(data), "--max-steps", "1", "--cache-dir", str(tmp_path / "cache"), *TINY_FLAGS]
    assert main([*args, "--out-dir", str(blocker / "run")]) == 2
    assert f"error: {blocker / 'run'}: Not a directory" in capsys.readouterr().err
    assert main(["eval", "ppl", "--checkpoint", str(tiny_run), "--out", str(blocker)]) == 2
    assert f"error: {blocker}: File exists" in capsys.readouterr().err


def test_an_existing_run_is_not_overwritten(tmp_path, tiny_run, capsys):
    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    args = ["train", "--data", str(data), "--max-steps", "1", "--cache-dir", str(tmp_path / "cache"), *TINY_FLAGS]
    assert main([*args, "--out-dir", str(tiny_run)]) == 2
    assert f"error: --out-dir: {tiny_run} already holds a run; continue it with --resume" in capsys.readouterr().err


def test_a_run_folder_in_use_is_refused(tmp_path, tiny_run, capsys):
    """Two writers on one run folder: a --resume, or a new run's --out-dir, while another process holds its lock."""
    from tests.train.test_run_lock import lock_held_elsewhere

    data = tmp_path / "data.txt"
    data.write_text(grammar_text(), encoding="utf-8")
    args = ["train", "--data", str(data), "--max-steps", "1", "--cache-dir", str(tmp_path / "cache"), *TINY_FLAGS]
    for folder, command, flag in (
        (tiny_run, ["train", "--resume", str(tiny_run)], "--resume"),
        (tmp_path / "new", [*args, "--out-dir", str(tmp_path / "new")], "--out-dir"),
    ):
        folder.mkdir(exist_ok=True)
        with lock_held_elsewhere(folder) as holder:
            assert main(command) == 2
        err = capsys.readouterr().err
        assert (
            err.startswith(
                f"miras train: error: {flag}: {folder} is in use by another miras train (pid {holder.pid} on host "
            )
            and err.count("\n") == 1
        ), err
    assert not (tmp_path / "new" / "config.json").exists()


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("miras ")


def test_checkpoints_are_as_readable_as_the_umask_allows(tiny_run):
    """safetensors writes 0600 files whatever the umask; a run folder shared by a group must stay readable."""
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in tiny_run.rglob("*.safetensors")]
    assert files and all(p.stat().st_mode & 0o777 == 0o666 & ~mask for p in files)
