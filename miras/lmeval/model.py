"""The lm-eval model "miras": a `TemplateLM` (an `lm_eval.api.model.LM`) over a MirasLM and the miras Tokenizer.

Scoring follows lm-eval's HFLM, so numbers are comparable with published lm-eval results:
- loglikelihood: context and continuation are encoded together and split where the context's encoding ends (as
  `TemplateLM._encode_pair` does); an empty context becomes EOS; context + continuation keep their last
  max_length + 1 tokens (a continuation longer than max_length is kept whole, where HFLM would mis-slice).
- loglikelihood_rolling: lm-eval's disjoint rolling windows of max_length tokens, prefixed by EOS, each token
  scored once.
- generate_until: greedy decoding from the last max_length context tokens; prefill in one forward, then one
  recurrent `step` per token.

Batches are right-padded. Every layer is causal, so padding after a sequence changes none of its logits (the chunked
memory op splits chunks from position 0 either way); pad logits are never read.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window, warning_once

from miras.checks import check_int
from miras.data import Tokenizer
from miras.device import resolve_device
from miras.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for generation tasks that do not set max_gen_toks


def load_model_and_tokenizer(path: str | Path) -> tuple[torch.nn.Module, Tokenizer]:
    """What `pretrained=PATH` names -> (model in eval mode, tokenizer).

    A miras run folder (its latest checkpoint) or one of its checkpoint folders, via the trainer's own loader; or a
    Hugging Face folder of a Miras model (`miras convert to-hf`, needs miras[hf]), whose native MirasLM is used.
    """
    from miras.hf import is_hf_folder

    if is_hf_folder(path):
        from miras.hf.convert import load_hf

        model, tokenizer = load_hf(path)
        return model.lm, tokenizer
    from miras.run.checkpoint import load_trained

    return load_trained(path)


@register_model("miras")
class MirasEvalLM(TemplateLM):
    """lm-eval adapter. Build it from a run folder (`pretrained=PATH`, what `--model_args` passes) or from objects
    already in memory (`model=..., tokenizer=...`, e.g. right after training).

    model:      `model(input_ids).logits` [B, T, vocab]; generation also uses `allocate_cache(B)`,
                `model(input_ids, cache=...)` and `step(ids, cache)`, as MirasLM has.
    tokenizer:  `encode`, `decode`, `eos_id` (miras.data.Tokenizer).
    max_length: tokens per forward; default the model's `config.max_position_embeddings` (its training length).
    device:     default "cuda" when available, else "cpu". lm-eval's command line passes "cuda:0" unless told
                otherwise, so a CUDA device without CUDA falls back to the CPU with a warning.
    max_batch_size is accepted because lm-eval always passes it; this adapter has no automatic batch sizing.
    """

    def __init__(
        self,
        pretrained: str | Path | None = None,
        batch_size: int | str = 8,
        max_length: int | None = None,
        device: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_batch_size: int | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        super().__init__()
        if (pretrained is None) == (model is None) or (model is None) != (tokenizer is None):
            raise ValueError("MirasEvalLM needs either pretrained=PATH or both model= and tokenizer=")
        if pretrained is not None:
            model, tokenizer = load_model_and_tokenizer(pretrained)
        self._batch_size = _positive_int("batch_size", batch_size)
        if max_length is None:
            max_length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
            if max_length is None:
                raise ValueError("max_length is required: the model has no config.max_position_embeddings")
        self._max_length = _positive_int("max_length", max_length)
        self._max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        # lm-eval's own command line asks for cuda:0 unless told otherwise: the CPU then, with a warning.
        self._device = resolve_device(None if device is None else str(device), "device", cuda_fallback=True)
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer

    # lm-eval's model interface ----------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        # The miras tokenizer adds no special tokens; EOS as a prefix is lm-eval's job (prefix_token_id).
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]], disable_tqdm: bool = False
    ) -> list[tuple[float, bool]]:
        """requests: (request strings for lm-eval's cache, or None; context ids; continuation ids) ->
        (sum of the continuation's log-probs, whether greedy decoding would produce it) for each."""

        def longest_first(req):
            # The first batch is the largest, so an out-of-memory error shows at once; similar lengths pad little.
            tokens = req[1] + req[2]
            return -len(tokens), tuple(tokens)

        collator = Collator(requests, sort_fn=longest_first)
        results = []
        bar = progress_bar(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for batch in collator.get_batched(n=self.batch_size):
            inputs, continuations = [], []
            for _, context, continuation in batch:
                # The last max_length + 1 tokens (the final one is only a target), as HFLM. A continuation longer
                # than max_length is kept whole in one longer forward (no layer has a hard length limit), where
                # HFLM would slice the wrong logits.
                width = self.max_length
                if len(continuation) > width:
                    warning_once(log, "continuations longer than max_length=%d are scored in one longer forward", width)
                    width = len(continuation)
                inputs.append((context + continuation)[-(width + 1) :][:-1])
                continuations.append(continuation)
            logits = self._logits(inputs)  # [B, T, vocab]
            for (request, _, _), row, tokens, continuation in zip(batch, logits, inputs, continuations):
                end = len(tokens)
                # Normalise only the positions that predict the continuation: a [B, T, vocab] log-softmax would
                # double the largest tensor of the batch.
                scored = F.log_softmax(row[end - len(continuation) : end], dim=-1)
                target = torch.tensor(continuation, device=scored.device)
                answer = (
                    float(scored.gather(-1, target[:, None]).sum()),
                    bool((scored.argmax(dim=-1) == target).all()),
                )
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
                results.append(answer)
                bar.update(1)
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Each document's total log-likelihood, scored in lm-eval's disjoint windows of max_length tokens."""
        windows, owner = [], []
        for i, (text,) in enumerate(req.args for req in requests):
            pairs = get_rolling_token_windows(
                token_list=self.tok_encode(text),
                prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length,
                context_len=1,
            )
            for context, continuation in map(make_disjoint_window, pairs):
                windows.append((None, context, continuation))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first `until` string, at EOS or after max_gen_toks tokens.

        Only sequences of equal token length share a batch: a recurrent state cannot skip padding on the left.
        """
        jobs = []
        for context, gen_kwargs in (req.args for req in requests):
            until, max_gen_toks = self._greedy_kwargs(gen_kwargs)
            # The last max_length context tokens, as for scoring; an empty context is conditioned on EOS. HFLM keeps
            # max_length - max_gen_toks so that prompt and output fit one attention window; a recurrent state
            # carries on past max_length instead.
            tokens = (self.tok_encode(context) or [self.prefix_token_id])[-self.max_length :]
            jobs.append((tokens, tuple(until), max_gen_toks))
        order = sorted(range(len(jobs)), key=lambda i: (-len(jobs[i][0]), jobs[i][1:]))
        results: list[str | None] = [None] * len(jobs)
        bar = progress_bar(total=len(jobs), disable=disable_tqdm, desc="generate_until")
        for (_, until, max_gen_toks), group in itertools.groupby(order, key=lambda i: (len(jobs[i][0]), *jobs[i][1:])):
            group = list(group)
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                texts = self._greedy([jobs[i][0] for i in batch], list(until), max_gen_toks)
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(batch))
        bar.close()
        return results

    # internals ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _logits(self, inputs: list[list[int]]) -> torch.Tensor:
        """Right-padded batch forward: [B, max len, vocab] in float32."""
        width = max(map(len, inputs))
        ids = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
        for row, tokens in enumerate(inputs):
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        return self.model(ids.to(self.device)).logits.float()

    def _greedy_kwargs(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings, max_gen_toks); anything that asks for something other than greedy decoding is an error."""
        kwargs = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self._max_gen_toks)
        until = [s for s in kwargs.pop("until") if s]
        max_gen_toks = _positive_int("max_gen_toks", kwargs.pop("max_gen_toks"))
        do_sample, temperature = kwargs.pop("do_sample"), kwargs.pop("temperature", 0.0)
        if do_sample or temperature:
            raise ValueError(
                f"the miras lm-eval model decodes greedily only; got do_sample={do_sample}, temperature={temperature}"
            )
        if kwargs.pop("num_beams", 1) != 1:
            raise ValueError("the miras lm-eval model has no beam search (num_beams must be 1)")
        if kwargs:
            raise ValueError(f"the miras lm-eval model does not support generation arguments {sorted(kwargs)}")
        return until, max_gen_toks

    @torch.inference_mode()
    def _greedy(self, contexts: list[list[int]], until: list[str], max_gen_toks: int) -> list[str]:
        """Greedy decoding for equal-length contexts; each text is cut before its first stop string."""
        ids = torch.tensor(contexts, dtype=torch.long, device=self.device)
        out = self.model(ids, cache=self.model.allocate_cache(len(contexts)))
        logits, cache = out.logits[:, -1], out.cache
        generated: list[list[int]] = [[] for _ in contexts]
        done = [False] * len(contexts)
        for step in range(max_gen_toks):
            next_ids = logits.argmax(dim=-1)  # [B]
            for row, token in enumerate(next_ids.tolist()):
                if done[row]:
                    continue
                if token == self.eot_token_id:
                    done[row] = True
                    continue
                generated[row].append(token)
                text = self.tok_decode(generated[row])
                done[row] = any(stop in text for stop in until)
            if all(done) or step + 1 == max_gen_toks:
                break
            out = self.model.step(next_ids, cache)
            logits, cache = out.logits, out.cache
        texts = []
        for tokens in generated:
            text = self.tok_decode(tokens)
            for stop in until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts


def _positive_int(name: str, value: object) -> int:
    """lm-eval hands over command-line values as given ("8", 8, "auto"): an integer's text is read as the integer,
    anything else is refused as it is."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return check_int(name, value)
