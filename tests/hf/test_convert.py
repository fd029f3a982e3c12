"""run folder -> Hugging Face folder -> run folder keeps the model, its config, its checkpoint name and its tokenizer;
AutoModelForCausalLM / AutoTokenizer read the Hugging Face folder; bad folders fail with errors naming them."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("transformers", reason="needs the hf extra: pip install 'miras[hf]'")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

import miras.hf.auto  # noqa: E402, F401  (registers model_type "miras" with the Auto classes)
from miras.cli import main  # noqa: E402
from miras.config import ModelConfig  # noqa: E402
from miras.data import Tokenizer  # noqa: E402
from miras.hf import MirasConfig, MirasForCausalLM, hf_to_run, is_hf_folder, run_to_hf  # noqa: E402
from miras.hf.tokenizer import save_hf_tokenizer  # noqa: E402
from miras.run.checkpoint import latest_checkpoint, load_trained  # noqa: E402
from miras.run.folder import read_config  # noqa: E402
from tests.hf.tiny import make_run, model_config  # noqa: E402

TEXTS = ["The memory writes each key.", "a literal <|endoftext|> stays text", "  spaces\n\nand ünïcödé 😀 42"]


@pytest.fixture
def run(tmp_path, tokenizer):
    config = model_config("yaad-hybrid-swa", vocab_size=tokenizer.vocab_size)
    make_run(tmp_path / "run", tokenizer, config, step=7)
    return tmp_path / "run"


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_run_to_hf_to_run_round_trip(tmp_path, run, tokenizer):
    ids = torch.tensor([tokenizer.encode(TEXTS[0])])
    native, _ = load_trained(run)
    hf_dir = run_to_hf(run, tmp_path / "hf")
    assert is_hf_folder(hf_dir) and not is_hf_folder(run)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    assert type(model) is MirasForCausalLM and model.config.eos_token_id == tokenizer.eos_id
    torch.testing.assert_close(logits(model, ids), logits(native, ids), rtol=0, atol=0)
    hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for text in TEXTS:
        assert hf_tokenizer(text)["input_ids"] == tokenizer.encode(text)
        assert hf_tokenizer.decode(tokenizer.encode(text)) == text
    assert hf_tokenizer.eos_token_id == hf_tokenizer.pad_token_id == tokenizer.eos_id

    back = hf_to_run(hf_dir, tmp_path / "back")
    assert read_config(back) == read_config(run)
    assert latest_checkpoint(back).name == latest_checkpoint(run).name == "checkpoint-0000007"
    reloaded, reloaded_tokenizer = load_trained(back)
    torch.testing.assert_close(logits(reloaded, ids), logits(native, ids), rtol=0, atol=0)
    assert reloaded_tokenizer.fingerprint == tokenizer.fingerprint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "hf", "run"]  # no temporary folder left


def test_a_converted_folder_loads_with_trust_remote_code_and_no_import_of_miras(tmp_path, run, tokenizer):
    """What plain `lm_eval --model hf --model_args pretrained=HF_DIR,trust_remote_code=True` does: a fresh process
    that imports transformers only; config.json's auto_map names the folder's two small files, which take the
    installed package's classes."""
    hf_dir = run_to_hf(run, tmp_path / "hf")
    assert json.loads((hf_dir / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"] == (
        "modeling_miras.MirasForCausalLM"
    )
    ids = [tokenizer.encode(TEXTS[0])]
    code = (
        "import json, sys, torch; from transformers import AutoModelForCausalLM; "
        f"model = AutoModelForCausalLM.from_pretrained({str(hf_dir)!r}, trust_remote_code=True).eval(); "
        f"logits = model(torch.tensor({ids})).logits; "
        "bases = [f'{c.__module__}.{c.__name__}' for c in type(model).__mro__]; "
        "print(json.dumps([bases, 'miras.hf.auto' in sys.modules, logits.tolist()]))"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    bases, registered, remote_logits = json.loads(done.stdout.splitlines()[-1])
    assert "miras.hf.modeling.MirasForCausalLM" in bases and not registered
    native, _ = load_trained(run)
    torch.testing.assert_close(torch.tensor(remote_logits), logits(native, torch.tensor(ids)), rtol=0, atol=1e-6)
    # With model_type "miras" registered (import miras.hf.auto), the folder loads as before, without remote code.
    assert type(AutoModelForCausalLM.from_pretrained(hf_dir)) is MirasForCausalLM


def test_cli_converts_both_ways_and_reports_bad_folders(tmp_path, run, capsys):
    assert main(["convert", "to-hf", str(run), str(tmp_path / "hf")]) == 0
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    assert load_trained(tmp_path / "back")[0].config == load_trained(run)[0].config
    capsys.readouterr()
    assert main(["convert", "to-hf", str(tmp_path / "nowhere"), str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["convert", "from-hf", str(run), str(tmp_path / "y")]) == 2
    assert "model_type must be 'miras'" in capsys.readouterr().err


def test_bad_inputs_name_the_folder(tmp_path, run):
    with pytest.raises(ValueError, match="nowhere: no such run or checkpoint folder"):
        run_to_hf(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(ValueError, match="already exists"):
        run_to_hf(run, run)
    with pytest.raises(ValueError, match="nowhere: no such Hugging Face folder"):
        hf_to_run(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: not a Hugging Face folder"):
        hf_to_run(tmp_path / "empty", tmp_path / "out")
    hf_dir = run_to_hf(run, tmp_path / "hf")
    (hf_dir / "tokenizer_meta.json").unlink()
    with pytest.raises(ValueError, match="hf: no miras tokenizer"):
        hf_to_run(hf_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_saved_from_python_becomes_a_run(tmp_path, tokenizer):
    config = model_config("moneta", vocab_size=tokenizer.vocab_size)
    model = MirasForCausalLM(MirasConfig.from_model_config(config)).eval()
    model.save_pretrained(tmp_path / "hf")
    save_hf_tokenizer(tokenizer, tmp_path / "hf")
    run = hf_to_run(tmp_path / "hf", tmp_path / "run")
    saved = read_config(run)
    assert ModelConfig.from_dict(saved["model"]).to_dict() == config.to_dict()
    assert saved["train"]["seq_len"] == config.max_position_embeddings and saved["train"]["preset"] == "moneta"
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    torch.testing.assert_close(logits(load_trained(run)[0], ids), logits(model, ids), rtol=0, atol=0)


def test_gpt2_tokenizer_converts_for_auto_tokenizer(tmp_path):
    gpt2 = Tokenizer.gpt2()
    save_hf_tokenizer(gpt2, tmp_path)
    assert json.loads((tmp_path / "tokenizer_meta.json").read_text())["kind"] == "gpt2"
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert hf_tokenizer("Hello world")["input_ids"] == [15496, 995]
    for text in TEXTS:
        assert hf_tokenizer(text)["input_ids"] == gpt2.encode(text)
    assert Tokenizer.load(tmp_path).fingerprint == gpt2.fingerprint  # miras itself keeps using tiktoken


def test_lmeval_loads_a_hugging_face_folder(tmp_path, run, tokenizer):
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'miras[eval]'")
    from miras.lmeval import MirasEvalLM, load_model_and_tokenizer

    hf_dir = run_to_hf(run, tmp_path / "hf")
    model, hf_tokenizer = load_model_and_tokenizer(hf_dir)
    native, _ = load_trained(run)
    ids = torch.tensor([tokenizer.encode(TEXTS[0])])
    torch.testing.assert_close(logits(model, ids), logits(native, ids), rtol=0, atol=0)
    assert hf_tokenizer.fingerprint == tokenizer.fingerprint
    lm = MirasEvalLM(pretrained=str(hf_dir), batch_size=2, device="cpu")
    from_run = MirasEvalLM(pretrained=str(run), batch_size=2, device="cpu")
    requests = [(None, tokenizer.encode("The memory"), tokenizer.encode(" writes"))]
    assert lm._loglikelihood_tokens(requests) == from_run._loglikelihood_tokens(requests)
