"""The chain's last steps: evaluate the candidates and the champion on the same eval sets, gate, promote
(docs/gate.md). No Prefect here: the stages run through the chain's executor.

Eval sets (each model of the decision is evaluated on every one of them):

- preference: the eval split of the candidates' dataset (the chain's own eval, at each run's β and
  precision, against the chain's reference) and, when the champion was trained on another dataset
  version with the same tokenizer, that version's eval split too: new data that is bad (a reversed
  preference) looks fine on its own eval split and shows on the champion's;
- generation (`gate.generation`): the verifiable prompts of those eval splits (answers from the chosen
  answers, when the pattern finds them) and of a fixed `eval_file`; prompts are tokenizer-free, so the
  champion is compared on them whatever its tokenizer.

An eval set that cannot score the champion (another tokenizer, a missing folder) blocks promotion: the
gate never promotes past a comparison it could not make; the reason says so (`dpop models promote`
moves the alias by hand).

A decision is recorded once (`pipeline.registry`, event `gate`) under a key of the candidates and the
gate config; the same chain again finds it while the alias still points where the decision left it,
so an up-to-date `dpop run` neither re-evaluates nor records anything (`probe_gate`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.identity import stable_hash
from pipeline.registry import Event, Registry
from pipeline.stage import NeedsWork, StageRecord, read_record
from pipeline.workspace import Workspace

CANDIDATE_ALIAS = "candidate"


@dataclass(frozen=True)
class Candidate:
    """A trained model of this chain run, and its preference eval on its own dataset (None: no eval)."""

    run: StageRecord
    model_id: str
    model_dir: str
    evaluation: StageRecord | None
    training: Mapping[str, Any]


@dataclass(frozen=True)
class GateResult:
    """The decision as recorded (`decision`: the gate event's details), the evals made for it."""

    decision: Mapping[str, Any]
    evals: tuple[StageRecord, ...] = ()
    reused: bool = False


def gate_config(spec_gate: Mapping[str, Any]) -> Any:
    from pipeline.gate import load_gate_config

    return load_gate_config(spec_gate, source="dpop.yaml")


def decision_key(candidates: Sequence[Candidate], config: Any) -> str:
    return (
        f"gate-{stable_hash({'candidates': [c.model_id for c in candidates], 'gate': config.as_dict()}, 16)}"
    )


def probe_gate(ws: Workspace, candidates: Sequence[Candidate], spec_gate: Mapping[str, Any]) -> GateResult:
    """The recorded decision for these candidates while the alias is where it left it, else NeedsWork."""
    config = gate_config(spec_gate)
    if not config.enabled:
        return GateResult(_disabled(config), reused=True)
    found = _still_valid(Registry(ws), decision_key(candidates, config), config.alias)
    if found is None:
        from flows.chain import _Remembered

        raise NeedsWork(_Remembered("gate", "", ".gate"))
    return GateResult(found.details, reused=True)


def _still_valid(registry: Registry, key: str, alias: str) -> Event | None:
    found = registry.find_gate(key)
    if found is None:
        return None
    holder = registry.current(alias)
    return found if found.details.get("champion_after") == (holder.model_id if holder else None) else None


def _disabled(config: Any) -> dict[str, Any]:
    reason = f"the gate is disabled (gate.enabled: false): {config.alias} unchanged"
    return {"outcome": "disabled", "alias": config.alias, "reason": reason, "candidates": []}


@dataclass
class GateStep:
    """One gate decision of a chain run. `stage(name, key, arguments, keywords)` runs a stage through the
    chain's `_Steps` (memo, executor); `reference`: (id, folder) of the chain's reference model."""

    ws: Workspace
    stage: Callable[..., StageRecord]
    candidates: Sequence[Candidate]
    reference: tuple[str, str]
    dataset_id: str  # the candidates' (reference log-prob) dataset version
    spec_gate: Mapping[str, Any]

    def __post_init__(self) -> None:
        self.config = gate_config(self.spec_gate)
        self.registry = Registry(self.ws)
        self.blockers: list[str] = []
        self.evals: list[StageRecord] = []

    def run(self) -> GateResult:
        if not self.config.enabled:
            # nothing to decide, nothing done: an up-to-date chain stays "up to date" (as `probe_gate`)
            return GateResult(_disabled(self.config), reused=True)
        key = decision_key(self.candidates, self.config)
        found = _still_valid(self.registry, key, self.config.alias)
        if found is not None:
            return GateResult(found.details, reused=True)
        holder = self.registry.current(self.config.alias)
        champion = self._champion(holder)
        models = [(c.model_id, c.model_dir, c.training) for c in self.candidates if c.evaluation is not None]
        if champion is not None:
            models.append(champion)
        rows = self._evaluate(models, holder)
        return GateResult(self._decide(key, holder, rows), tuple(self.evals))

    # --- the champion ------------------------------------------------------------------------------

    def _champion(self, holder: Event | None) -> tuple[str, str, Mapping[str, Any]] | None:
        """(id, folder, training config) of the alias's holder, when it can be evaluated."""
        if holder is None or holder.model_id in {c.model_id for c in self.candidates}:
            return None
        folder = holder.model_dir
        if not folder or not (Path(folder) / "config.json").is_file():
            self.blockers.append(
                f"the {self.config.alias} {holder.model_id} cannot be evaluated: its folder {folder} is gone"
            )
            return None
        return holder.model_id, folder, self.candidates[0].training

    def _champion_dataset(self, holder: Event | None) -> str | None:
        """The dataset version the holder was trained on (its run's `trained_on`), when known."""
        if holder is None or not holder.model_dir:
            return None
        record = read_record(Path(holder.model_dir).parent)
        if record is None or record.stage != "train":
            return None
        found = [i.artifact.id for i in record.inputs if i.relation == "trained_on"]
        return found[0] if found and (self.ws.dataset_dir(found[0]) / "manifest.json").is_file() else None

    # --- evaluations -------------------------------------------------------------------------------

    def _evaluate(self, models: list[tuple[str, str, Mapping]], holder: Event | None) -> list[dict]:
        """Every model on every eval set; the overall metric rows of all of them."""
        from dpop.evaluate import read_metrics

        datasets = [self.dataset_id]
        other = self._champion_dataset(holder)
        if other is not None and other != self.dataset_id:
            datasets.append(other)
        records = [c.evaluation for c in self.candidates if c.evaluation is not None]
        train_of = {c.model_id: self.dataset_id for c in self.candidates}
        if holder is not None:
            train_of[holder.model_id] = other
        for model_id, folder, training in models:
            for dataset in datasets:
                record = self._preference(model_id, folder, training, dataset, train_of.get(model_id))
                if record is not None:
                    records.append(record)
            records += self._generation(model_id, folder, training, datasets, train_of.get(model_id))
        rows = []
        for record in records:
            rows += [r for r in read_metrics(self.ws, record).to_pylist() if r["group_kind"] == "all"]
        self.evals = [r for r in records if r not in [c.evaluation for c in self.candidates]]
        return rows

    def _preference(
        self, model_id: str, folder: str, training: Mapping, dataset: str, trained_on: str | None
    ) -> StageRecord | None:
        """The model against the chain's reference on `dataset`'s eval split (None when that split is
        empty; a model that cannot read it blocks promotion)."""
        from flows.chain import _load, train_config
        from pipeline.shards import load_manifest

        splits = load_manifest(self.ws, dataset).get("splits") or {}
        if not (splits.get("eval") or {}).get("rows"):
            return None
        own = next((c.evaluation for c in self.candidates if c.model_id == model_id), None)
        if own is not None and dataset == self.dataset_id:
            return own
        try:  # before any work: another tokenizer's token ids mean nothing to this model
            _load("dpop.model_io:check_tokenizer")(load_manifest(self.ws, dataset), folder)
        except (ValueError, FileNotFoundError) as error:
            self.blockers.append(f"{model_id} cannot be scored on the eval split of {dataset}: {error}")
            return None

        def arguments() -> tuple:
            config = train_config(training)
            precision = _load("dpop.model_io:precision_for_training")(config)
            return Path(folder), Path(self.reference[1]), dataset, "eval", config.beta, precision

        def keywords() -> dict:
            return {"ws": self.ws, "train_dataset_id": trained_on}

        key = ("gate", model_id, self.reference[0], dataset, trained_on, dict(training))
        return self.stage("dpop.evaluate:PreferenceEvalStage", key, arguments, keywords)

    def _prompt_sets(self, datasets: Sequence[str]) -> list[Any]:
        from pipeline.evalset import from_dataset, from_file

        settings = self.config.generation
        found = []
        if settings.from_eval_split:
            for dataset in datasets:
                found.append(
                    from_dataset(
                        self.ws.dataset_dir(dataset),
                        dataset,
                        "eval",
                        settings.answer_pattern,
                        settings.max_prompts,
                    )
                )
        if settings.eval_file:
            found.append(from_file(Path(settings.eval_file), settings.answer_pattern, settings.max_prompts))
        return [p for p in found if p.rows]

    def _generation(
        self, model_id: str, folder: str, training: Mapping, datasets: Sequence[str], trained_on: str | None
    ) -> list[StageRecord]:
        settings = self.config.generation
        if not settings.enabled:
            return []
        if not hasattr(self, "_sets"):
            self._sets = self._prompt_sets(datasets)
        records = []
        for prompts in self._sets:

            def arguments(prompts: Any = prompts) -> tuple:
                return Path(folder), prompts

            def keywords() -> dict:
                from flows.chain import _load, train_config

                precision = _load("dpop.model_io:precision_for_training")(train_config(training))
                return {
                    "ws": self.ws,
                    "answer_pattern": settings.answer_pattern,
                    "max_new_tokens": settings.max_new_tokens,
                    "batch_size": settings.batch_size,
                    "precision": precision,
                    "train_dataset_id": trained_on,
                }

            key = ("gate", model_id, prompts.id, dataclasses.asdict(settings), trained_on, dict(training))
            records.append(self.stage("dpop.generate:GenerationEvalStage", key, arguments, keywords))
        return records

    # --- the decision ------------------------------------------------------------------------------

    def _decide(self, key: str, holder: Event | None, rows: list[dict]) -> dict[str, Any]:
        from pipeline.gate import REFUSED, decide, scores_from_rows

        scores = scores_from_rows(rows)
        candidate_ids = [c.model_id for c in self.candidates if c.evaluation is not None]
        champion = None
        if holder is not None:
            champion = scores.get(holder.model_id) or _empty_scores(holder.model_id)
        decision = decide([scores[m] for m in candidate_ids if m in scores], champion, self.config)
        reason, outcome = decision.reason, decision.outcome
        promoted = decision.promoted
        if self.blockers and outcome == "promoted":
            outcome, promoted = REFUSED, None
            reason = f"refused, {decision.champion_before} stays {self.config.alias}: " + "; ".join(
                self.blockers
            )
        details = {
            **decision.as_dict(),
            "outcome": outcome,
            "promoted": promoted,
            "champion_after": promoted if promoted else decision.champion_before,
            "reason": reason,
            "blockers": list(self.blockers),
            "key": key,
            "candidates": [c.model_id for c in self.candidates],
            "run_ids": [c.run.id for c in self.candidates],
            "eval_ids": sorted({r["eval_id"] for r in rows}),
            "metrics": _metrics_by_model(rows),
            "gate": self.config.as_dict(),
        }
        event = self.registry.record_gate(self.config.alias, reason, details)
        if promoted:
            folder = next(c.model_dir for c in self.candidates if c.model_id == promoted)
            self.registry.assign(
                self.config.alias, promoted, folder, reason, actor="gate", details={"gate_seq": event.seq}
            )
        best = _best_candidate(decision, self.candidates)
        current = self.registry.current(CANDIDATE_ALIAS)
        if best is not None and (current is None or current.model_id != best.model_id):
            why = f"latest candidate (run {best.run.id}); gate: {outcome}"
            self.registry.assign(CANDIDATE_ALIAS, best.model_id, best.model_dir, why, actor="gate")
        return details


def _empty_scores(model_id: str) -> Any:
    from pipeline.gate import Scores

    return Scores(model_id, {})


def _metrics_by_model(rows: list[dict]) -> dict[str, dict[str, dict[str, float | None]]]:
    """model -> eval set -> metric -> value (overall), as the decision's details and the summary show."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for row in rows:
        out.setdefault(row["model_id"], {}).setdefault(row["eval_set_id"], {})[row["metric"]] = row["value"]
    return out


def _best_candidate(decision: Any, candidates: Sequence[Candidate]) -> Candidate | None:
    """The promoted candidate, else the best-ranked one (the `candidate` alias shows what was tried)."""
    if not decision.verdicts:
        return None
    chosen = (
        decision.promoted
        or max(enumerate(decision.verdicts), key=lambda item: (item[1].rank_key, -item[0]))[1].model_id
    )
    return next((c for c in candidates if c.model_id == chosen), None)
