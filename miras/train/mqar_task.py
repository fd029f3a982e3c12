"""The MQAR task of the trainer (TrainConfig data "mqar"): multi-query associative recall, zoology's protocol.

The run trains from scratch on `mqar_splits` training rows and is scored on the disjoint test split: argmax accuracy
and cross-entropy at the query positions only (every other label is IGNORE_INDEX; labels are already aligned with
the outputs). Batches walk through the training set in a fresh seeded order each epoch (the incomplete tail batch is
dropped), a function of (seed, batch index) only, so a resumed run continues exactly. Periodic evaluations ("eval"
records with `accuracy` and `val_loss`) give the learning curve; the final one is the result. No tokenizer, no
sample: the run folder holds config.json, metrics.jsonl, loss.png and the checkpoints.

Sweeps over models, widths, learning rates and seeds are miras.experiments.mqar.
"""

from __future__ import annotations

import contextlib

import torch

from miras.config import ModelConfig
from miras.data.synthetic import MQARBatch, mqar_splits
from miras.metrics import NLLAccumulator
from miras.models import MirasLM
from miras.train.config import MAX_MQAR_TRAIN_EXAMPLES, ConfigError, TrainConfig
from miras.train.parts import Run

EVAL_BATCH = 64  # test rows per forward, at least


@torch.no_grad()
def evaluate_mqar(
    model: MirasLM,
    data: MQARBatch,
    *,
    batch_size: int = EVAL_BATCH,
    device: str | torch.device = "cpu",
    autocast: contextlib.AbstractContextManager | None = None,
) -> NLLAccumulator:
    """Query-position accuracy and loss of `model` on MQAR rows (`.accuracy`, `.mean_nll` of the result)."""
    was_training = model.training
    model.eval()
    acc = NLLAccumulator()
    for lo in range(0, len(data.inputs), batch_size):
        with autocast or contextlib.nullcontext():
            logits = model(data.inputs[lo : lo + batch_size].to(device)).logits
        acc.update(logits, data.labels[lo : lo + batch_size].to(device))
    model.train(was_training)
    return acc


def train_examples(config: TrainConfig) -> int:
    """The training set's size: mqar_train_examples, or one example per trained row up to MAX_MQAR_TRAIN_EXAMPLES."""
    if config.mqar_train_examples != -1:
        return config.mqar_train_examples
    rows = config.batch_size * config.grad_accum * config.max_steps if config.max_steps != -1 else 0
    return max(config.batch_size, min(rows or MAX_MQAR_TRAIN_EXAMPLES, MAX_MQAR_TRAIN_EXAMPLES))


def prepare(config: TrainConfig, model_config: ModelConfig | None) -> tuple[TrainConfig, ModelConfig, MQARTask]:
    """(config with seq_len resolved, model config, task). model_config: a saved run's, else config's own. The fields
    were checked by TrainConfig (its vocabulary against a given model's; `resolved_model` builds one with it), and
    `replace` checks them again once seq_len is resolved."""
    if model_config is None:
        model_config = config.resolved_model()
        if config.seq_len == -1:
            config = config.replace(seq_len=model_config.max_position_embeddings)
    return config, model_config, MQARTask(config)


class MQARTask:
    """Batches of the training split and evaluations on the test split (the loop's task, see parts.Task)."""

    def __init__(self, config: TrainConfig) -> None:
        self.config, self.size = config, train_examples(config)
        try:
            self.data = mqar_splits(
                config.seq_len,
                config.mqar_kv_pairs,
                config.vocab_size,
                train_examples=self.size,
                test_examples=config.mqar_test_examples,
                seed=config.seed,
                power_a=config.mqar_power_a,
            )
        except ValueError as e:  # too few distinct examples for the sizes asked for
            raise ConfigError("mqar_test_examples", str(e)) from None
        self.per_epoch = self.size // config.batch_size
        self._epoch, self._order, self._perm = -1, None, None
        self._last: tuple[int, dict] | None = None  # (step, fields) of the latest evaluation

    def save(self, run_dir) -> None:
        """Nothing beyond config.json: the task is rebuilt from the config."""

    def describe(self) -> str:
        c = self.config
        return (
            f"data: MQAR, {c.mqar_kv_pairs} kv pairs in {c.seq_len} tokens, vocab {c.vocab_size}; "
            f"{self.size:,} training examples, {len(self.data.test.inputs):,} test examples"
        )

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number `index` (0-based) of the run: rows of epoch index // per_epoch's seeded order."""
        epoch, i = divmod(index, self.per_epoch)
        if epoch < self._epoch:
            self._epoch, self._order = -1, None
        if self._order is None:
            self._order = torch.Generator().manual_seed(self.config.seed)
        while self._epoch < epoch:  # every epoch's order comes from one generator, in turn
            self._perm, self._epoch = torch.randperm(self.size, generator=self._order), self._epoch + 1
        rows = self._perm[i * self.config.batch_size : (i + 1) * self.config.batch_size]
        return self.data.train.inputs[rows], self.data.train.labels[rows]

    def periodic_eval(self, run: Run, step: int) -> tuple[dict, str]:
        """The test split's accuracy and loss: ({"val_loss", "accuracy"}, the log line)."""
        if self._last is None or self._last[0] != step:  # the final evaluation after a periodic one at its step
            acc = evaluate_mqar(
                run.model,
                self.data.test,
                batch_size=max(run.local_batch, EVAL_BATCH),
                device=run.device,
                autocast=run.autocast,
            )
            self._last = (step, {"val_loss": acc.mean_nll, "accuracy": acc.accuracy})
        fields = self._last[1]
        return dict(fields), f"MQAR test accuracy {fields['accuracy']:.3f}, loss {fields['val_loss']:.4f}"

    def final_eval(self, run: Run, step: int) -> tuple[dict, dict, list[str]]:
        """(evals {"mqar": {"loss", "accuracy", "examples"}}, the "final" record's fields, log lines)."""
        fields, line = self.periodic_eval(run, step)
        examples = len(self.data.test.inputs)
        evals = {"mqar": {"loss": fields["val_loss"], "accuracy": fields["accuracy"], "examples": examples}}
        return evals, {**fields, "evals": evals}, [f"{line} ({examples:,} test examples)"]
