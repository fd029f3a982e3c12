"""The results store every experiment resumes from: one JSON file in the study's output folder that holds the budget
(the settings that change results) next to the finished records. It is rewritten atomically after every record, so a
rerun of the same command skips what is done; reopened under another budget it refuses, naming what differs, so a
folder never mixes results of two budgets.
"""

from __future__ import annotations

import json
from pathlib import Path

from miras.io_atomic import write_text_atomic
from miras.train.config import ConfigError


class ResultsStore:
    """`path`: the JSON file; `budget_key`: where in it the budget is kept (compare: "budget", MQAR: "sweep");
    `budget`: this run's budget, the fields that must match a saved file's for its records to be reused."""

    def __init__(self, path: str | Path, budget_key: str, budget: dict) -> None:
        self.path, self.budget_key = Path(path), budget_key
        self.budget = json.loads(json.dumps(budget))  # as the file holds it: tuples become lists

    def load(self) -> dict:
        """The saved file ({} when there is none); ConfigError("out") when it holds another budget."""
        if not self.path.is_file():
            return {}
        saved = json.loads(self.path.read_text(encoding="utf-8"))
        held = saved.get(self.budget_key, {})
        changed = sorted(k for k in self.budget if held.get(k) != self.budget[k])
        if changed:
            raise ConfigError(
                "out",
                f"{self.path.parent} holds results of another budget (differs in "
                f"{', '.join(changed)}); use a new --out folder, or the same flags to continue "
                f"it",
            )
        return saved

    def save(self, payload: dict, indent: int = 1) -> None:
        """Replace the file with `payload` (which holds the budget under budget_key), atomically and durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps(payload, indent=indent) + "\n")
