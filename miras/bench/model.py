"""Model-level benchmarks: training tokens/s (fwd + bwd + AdamW step) of a Miras LM beside Transformer++, and decode
latency per token against the length of the context already consumed (recurrent `step` after a chunk-parallel
prefill, the path `MirasLM.generate` takes). Random token ids: speed does not depend on the text.
"""

from __future__ import annotations

import copy

import torch

from miras.bench.report import say
from miras.bench.timing import Fn, Settings, compare
from miras.config import ModelConfig
from miras.layers.miras_layer import use_compiled_steps
from miras.models import MirasLM
from miras.ops.torch_workarounds import compile_keeping_saved_tensors


def _models(names: tuple[str, ...], size: str, max_len: int, device, dtype) -> dict:
    torch.manual_seed(0)
    return {
        name: MirasLM(ModelConfig.from_size(size, preset=name, max_position_embeddings=max_len)).to(
            device=device, dtype=dtype
        )
        for name in names
    }


def run_train(
    settings: Settings,
    names: tuple[str, ...],
    size: str,
    seq_lens: list[int],
    batch: int,
    compiled: tuple[str, ...] = (),
) -> dict:
    """One optimizer step per call: zero_grad, loss on next-token labels, backward, AdamW.step; the models run
    round-robin at each T. compiled: these models also run as "NAME --compile", a copy trained the way
    `miras train --compile` trains (compiled chunk steps, the rest of the model under torch.compile); its first
    call, a warm-up, compiles."""
    models = _models(names, size, max(seq_lens), settings.device, settings.dtype)
    forward = dict(models)
    for name in compiled:
        models[f"{name} --compile"] = copy.deepcopy(models[name])
        use_compiled_steps(models[f"{name} --compile"])
        forward[f"{name} --compile"] = compile_keeping_saved_tensors(models[f"{name} --compile"])
    rows = []
    for T in seq_lens:
        ids = torch.randint(0, next(iter(models.values())).config.vocab_size, (batch, T), device=settings.device)
        fns: dict[str, Fn] = {}
        for name, model in models.items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

            def step(model=forward[name], opt=opt):
                opt.zero_grad(set_to_none=True)
                model(ids, labels=ids).loss.backward()
                opt.step()

            fns[name] = step
        timings = compare(fns, device=settings.device, repeats=settings.repeats, warmup=settings.warmup)
        for name, t in timings.items():
            rows.append(
                {
                    "model": name,
                    "params": models[name].num_parameters(),
                    "T": T,
                    "batch": batch,
                    **t.to_dict(),
                    "tokens_per_s": batch * T / t.median,
                }
            )
        say(f"[model train] T={T}: " + ", ".join(f"{n} {batch * T / t.median:.0f} tok/s" for n, t in timings.items()))
    how = f"size {size!r}, batch {batch}, AdamW"
    if compiled:
        how += "; NAME --compile: trained as by `miras train --compile` (compiled chunk steps, the rest under torch.compile)"
    return {"config": how, "rows": rows}


def run_decode(settings: Settings, names: tuple[str, ...], size: str, contexts: list[int], steps: int) -> dict:
    """Per-token latency of `step` (batch 1, greedy) after prefilling `context` random tokens. All contexts of a
    model are prefilled first, then stepped round-robin, so their latencies are measured side by side."""
    models = _models(names, size, max(contexts), settings.device, settings.dtype)
    rows = []
    for name, model in models.items():
        fns: dict[str, Fn] = {}
        for ctx in contexts:
            prompt = torch.randint(0, model.config.vocab_size, (1, ctx), device=settings.device)
            with torch.no_grad():
                out = model(prompt, cache=model.allocate_cache(1))
            state = {"cache": out.cache, "ids": out.logits[:, -1].argmax(-1)}

            def step(model=model, state=state):
                with torch.no_grad():
                    out = model.step(state["ids"], state["cache"])
                state["cache"], state["ids"] = out.cache, out.logits.argmax(-1)

            fns[str(ctx)] = step
        timings = compare(fns, device=settings.device, repeats=steps, warmup=settings.warmup)
        for ctx in contexts:
            rows.append({"model": name, "context": ctx, **timings[str(ctx)].to_dict()})
        say(
            f"[model decode] {name}: "
            + ", ".join(f"ctx {c} {1e3 * timings[str(c)].median:.2f} ms/token" for c in contexts)
        )
    out = {"how": f"size {size!r}, batch 1, median of {steps} steps per context", "rows": rows}
    short, long = min(contexts), max(contexts)
    miras_rows = {r["context"]: r["median_s"] for r in rows if r["model"] == names[0]}
    if short != long:
        out |= {"model": names[0], "short": short, "long": long, "ratio": miras_rows[long] / miras_rows[short]}
    return out


def run_model(
    settings: Settings,
    *,
    names: tuple[str, ...],
    size: str,
    train_seq_lens: list[int],
    batch: int,
    decode_contexts: list[int],
    decode_steps: int,
) -> dict:
    """Both model benchmarks; names[0] is the Miras model whose decode ratio (longest over shortest context) is
    reported, and which also trains with --compile."""
    return {
        "train": run_train(settings, names, size, train_seq_lens, batch, compiled=names[:1]),
        "decode": run_decode(settings, names, size, decode_contexts, decode_steps),
    }
