"""The last offline evaluation, for the overview: the ``report.json`` that ``recsvc evaluate
--out DIR`` writes, at the path RECSVC_EVALUATION_REPORT names. A bundle records no
evaluation (training does not evaluate), so without that setting, or without the file, the
overview says that no evaluation is recorded. Read again only when the file changes."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SERVED = "recsvc"  # the report's entry for the model as served; the others are baselines
METRICS = ("ndcg", "precision", "recall", "hit_rate", "coverage")


@dataclass(frozen=True)
class ModelScores:
    name: str
    scores: dict[str, float | None]  # by metric name (without @k)
    served: bool


@dataclass(frozen=True)
class Evaluation:
    path: Path
    written: str  # the file's modification time, ISO 8601
    cutoff: str | None
    k: int
    test_customers: int | None
    models: list[ModelScores]  # as the report orders them, the served model first

    def ndcg(self, name: str) -> float | None:
        return next((m.scores["ndcg"] for m in self.models if m.name == name), None)


@dataclass(frozen=True)
class EvaluationState:
    evaluation: Evaluation | None
    detail: str  # why there is none


class EvaluationReport:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], EvaluationState] | None = None

    def state(self) -> EvaluationState:
        if self.path is None:
            return EvaluationState(
                None,
                "no evaluation recorded: set RECSVC_EVALUATION_REPORT to the report.json of "
                "`recsvc evaluate`",
            )
        try:
            stat = self.path.stat()
        except OSError:
            return EvaluationState(None, f"no evaluation recorded: {self.path} does not exist")
        signature = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cached is not None and self._cached[0] == signature:
                return self._cached[1]
        state = _read(self.path, stat.st_mtime)
        with self._lock:
            self._cached = (signature, state)
        return state


def _read(path: Path, modified: float) -> EvaluationState:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        protocol = report["protocol"]
        k = int(protocol["k"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return EvaluationState(None, f"{path} is not a report of `recsvc evaluate` ({error})")
    models = []
    for name, entry in report.items():
        if isinstance(entry, dict) and f"ndcg@{k}" in entry:
            scores = {metric: _number(entry.get(f"{metric}@{k}")) for metric in METRICS}
            models.append(ModelScores(name, scores, name == SERVED))
    models.sort(key=lambda m: not m.served)
    evaluation = Evaluation(
        path=path,
        written=datetime.fromtimestamp(modified, UTC).isoformat(timespec="seconds"),
        cutoff=protocol.get("cutoff"),
        k=k,
        test_customers=protocol.get("test_customers"),
        models=models,
    )
    return EvaluationState(evaluation, "")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None
