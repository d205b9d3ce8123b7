"""Generation evaluation as a stage: greedy answers of a model to a verifiable prompt set, exact match.

`GenerationEvalStage(model, prompts, …, ws=…)` renders each prompt of a `pipeline.evalset.PromptSet`
with the model's chat template exactly as training saw it (`pipeline.tokenize.PairTokenizer`: the same
template or plain form, the prompt's last `max_prompt_length` tokens), generates greedily in batches
(`model.generate`, left padding, longest prompts first, at most `batch_size` prompts and
`token_budget` padded tokens of prompt + `max_new_tokens` per batch), cuts each answer at its first
end-of-sequence token, extracts its final answer with the prompt set's pattern, and writes

    <ws>/evals/<eval_id>/generations.parquet   contract generation_eval: prompt, generation, extracted
                                               answer, reference answer, correct, tokens, finished
    <ws>/evals/<eval_id>/metrics.parquet       contract eval_metric, kind "generation": exact_match,
                                               answer_found, finished, generated_tokens; overall and per
                                               source

Identity: the evaluated model (`evaluated_model`), the prompt set (`evaluated_on`, its content id), the
training dataset the set was checked against (`checked_against`, when given), and the config (new
tokens, answer pattern, prompt length, precision). Greedy decoding makes the output a function of
these; `batch_size` and the token budget change how it runs, not what it writes (left padding with the
attention mask gives each prompt the positions it has alone).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpop.model_io import Precision, load_causal_lm, model_artifact, require_model_dir, require_safetensors
from pipeline.contracts import load_contract
from pipeline.evalset import (
    DEFAULT_ANSWER_PATTERN,
    Overlap,
    PromptSet,
    compile_pattern,
    extract_answer,
    overlap,
)
from pipeline.stage import (
    INLINE,
    Artifact,
    Executor,
    Input,
    Stage,
    StageContext,
    StageOutput,
    StageRecord,
    run_stage,
    workspace_path,
)
from pipeline.workspace import Workspace

STAGE_NAME = "generation_eval"
STAGE_VERSION = 1
GENERATIONS_FILE, METRICS_FILE = "generations.parquet", "metrics.parquet"
GENERATION_CONTRACT, METRIC_CONTRACT = "generation_eval", "eval_metric"
KIND = "generation"
DEFAULT_MAX_NEW_TOKENS = 256
DEFAULT_BATCH_SIZE = 16
DEFAULT_TOKEN_BUDGET = 32_768
DEFAULT_MAX_PROMPT_LENGTH = 1024


# --- batched greedy generation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Generated:
    """One prompt's answer: the new token ids (cut after EOS) and whether EOS ended it."""

    tokens: list[int]
    finished: bool


def generation_batches(
    lengths: np.ndarray, batch_size: int, budget: int, new_tokens: int
) -> list[np.ndarray]:
    """Row indices per `generate` call: longest prompt first, at most `batch_size` prompts and `budget`
    tokens of (longest prompt + new tokens) per call; a prompt over the budget still gets its own."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches, start = [], 0
    while start < len(order):
        width = int(lengths[order[start]]) + new_tokens
        count = max(1, min(batch_size, budget // max(width, 1)))
        batches.append(order[start : start + count])
        start += count
    return batches


def left_padded(prompts: list[list[int]], pad: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) with every prompt right-aligned: generation continues each one at
    the same column, and the mask keeps pads out of attention and positions."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt) :] = 1
    return ids, mask


def cut_at_eos(tokens: list[int], eos: set[int]) -> Generated:
    """The tokens up to and including the first end-of-sequence token."""
    for index, token in enumerate(tokens):
        if token in eos:
            return Generated(tokens[: index + 1], True)
    return Generated(tokens, False)


@dataclass(frozen=True)
class Generator:
    """A loaded model and its tokenizer's special ids, generating greedily under a precision."""

    model: Any
    device: Any
    precision: Precision
    pad: int
    eos: frozenset[int]

    @classmethod
    def load(cls, path: Path, precision: Precision, eos: set[int], pad: int, trust_remote_code: bool = False):
        import torch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = load_causal_lm(path, dtype=precision.torch_dtype(), trust_remote_code=trust_remote_code)
        return cls(model.to(device).eval(), device, precision, pad, frozenset(eos))

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[Generated]:
        import torch
        from transformers import GenerationConfig

        ids, mask = left_padded(prompts, self.pad)
        config = GenerationConfig(  # explicit: a model's own generation_config (sampling) is not used
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            pad_token_id=self.pad,
            eos_token_id=sorted(self.eos),
        )
        with torch.inference_mode(), self.precision.autocast_context(self.device.type):
            out = self.model.generate(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device), generation_config=config
            )
        new = out[:, ids.shape[1] :].cpu().tolist()
        return [cut_at_eos(tokens, set(self.eos)) for tokens in new]


# --- the stage ---------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)  # eq=False: identity hashing (a prompt set holds dicts)
class GenerationEvalStage(Stage):
    """`model`'s greedy answers to `prompts` (module doc). `train_dataset_id`: the dataset whose
    training split the prompt set is checked against (the overlap goes in the record)."""

    name = STAGE_NAME
    version = STAGE_VERSION
    id_prefix = "geneval"

    model: Path
    prompts: PromptSet
    answer_pattern: str = DEFAULT_ANSWER_PATTERN
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    max_prompt_length: int = DEFAULT_MAX_PROMPT_LENGTH
    precision: Precision | str = "float32"
    batch_size: int = DEFAULT_BATCH_SIZE
    token_budget: int = DEFAULT_TOKEN_BUDGET
    train_dataset_id: str | None = None
    trust_remote_code: bool = False
    ws: Workspace = field(kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", require_model_dir(self.model))
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        compile_pattern(self.answer_pattern)
        for name in ("max_new_tokens", "max_prompt_length", "batch_size", "token_budget"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @cached_property
    def model_artifact(self) -> Artifact:
        return model_artifact(self.model)

    @cached_property
    def eval_set(self) -> Artifact:
        meta = {**self.prompts.origin, "unverifiable": self.prompts.unverifiable}
        return Artifact(self.prompts.id, "eval_set", None, rows=len(self.prompts.rows), meta=meta)

    def inputs(self) -> list[Input]:
        inputs = [Input(self.model_artifact, "evaluated_model"), Input(self.eval_set, "evaluated_on")]
        if self.train_dataset_id:
            path = workspace_path(self.ws, self.ws.dataset_dir(self.train_dataset_id))
            inputs.append(Input(Artifact(self.train_dataset_id, "dataset", path), "checked_against"))
        return inputs

    def config(self) -> dict[str, Any]:
        return {
            "max_new_tokens": int(self.max_new_tokens),
            "answer_pattern": self.answer_pattern,
            "max_prompt_length": int(self.max_prompt_length),
            "dtype": self.precision.label,
        }

    def folder(self, ws: Workspace) -> Path:
        return ws.eval_dir(self.id)

    def label(self) -> str:
        return f"generate {self.model_artifact.id} on {self.prompts.id}"

    def check(self) -> None:
        """What fails before any work: an empty prompt set, pickled weights."""
        if not self.prompts.rows:
            raise ValueError(
                f"prompt set {self.prompts.id} ({_origin_text(self.prompts.origin)}) has no verifiable prompt "
                f"({self.prompts.unverifiable} without an answer matching {self.answer_pattern!r})"
            )
        require_safetensors(self.model)

    def overlap(self) -> Overlap:
        folder = self.ws.dataset_dir(self.train_dataset_id) if self.train_dataset_id else None
        return overlap(folder, self.train_dataset_id, (), self.prompts.prompt_keys)

    def run(self, ctx: StageContext) -> StageOutput:
        self.check()
        prompt_ids, eos, pad = self._encode_prompts()
        generator = Generator.load(self.model, self.precision, eos, pad, self.trust_remote_code)
        answers: list[Generated | None] = [None] * len(prompt_ids)
        lengths = np.array([len(p) for p in prompt_ids])
        batches = generation_batches(lengths, self.batch_size, self.token_budget, self.max_new_tokens)
        for done, indices in enumerate(batches, start=1):
            results = generator.generate([prompt_ids[int(i)] for i in indices], self.max_new_tokens)
            for index, result in zip(indices, results, strict=True):
                answers[int(index)] = result
            ctx.progress(done, len(batches), "generate")
        table = self._generations(self._decode([a for a in answers if a is not None]))
        metrics = generation_metrics(self._ids(), table)
        pq.write_table(table, ctx.out / GENERATIONS_FILE)
        pq.write_table(metrics, ctx.out / METRICS_FILE)
        return self._output(ctx, table, metrics)

    def _tokenizer(self) -> Any:
        from pipeline.tokenize import PairTokenizer

        return PairTokenizer(self.model, self.max_prompt_length + 1, self.max_prompt_length)

    def _encode_prompts(self) -> tuple[list[list[int]], set[int], int]:
        """Each prompt's ids as training renders it (last `max_prompt_length` tokens), EOS ids, pad id."""
        import polars as pl

        from dpop.model_logps import pad_token_id

        tokenizer = self._tokenizer()
        messages = pl.Series("prompt", [list(row["prompt"]) for row in self.prompts.rows])
        texts = tokenizer.prompt_texts(messages)
        encoded = tokenizer.tokenizer.backend.encode_batch(texts, add_special_tokens=False)
        ids = [e.ids[-self.max_prompt_length :] for e in encoded]
        return ids, {int(tokenizer.eos_token_id)}, pad_token_id(self.model)

    def _decode(self, answers: list[Generated]) -> list[tuple[Generated, str]]:
        backend = self._tokenizer().tokenizer.backend
        return [(a, backend.decode(a.tokens, skip_special_tokens=True)) for a in answers]

    def _ids(self) -> dict[str, str]:
        return {"eval_id": self.id, "eval_set_id": self.prompts.id, "model_id": self.model_artifact.id}

    def _generations(self, decoded: list[tuple[Generated, str]]) -> pa.Table:
        pattern = compile_pattern(self.answer_pattern)
        rows = []
        for row, (answer, text) in zip(self.prompts.rows, decoded, strict=True):
            extracted = extract_answer(text, pattern)
            rows.append(
                {
                    **self._ids(),
                    "prompt_key": row["prompt_key"],
                    "prompt": str(list(row["prompt"])[-1].get("content") or ""),
                    "source": row.get("source"),
                    "generation": text,
                    "generated_tokens": len(answer.tokens),
                    "finished": answer.finished,
                    "extracted_answer": extracted,
                    "reference_answer": row["reference_answer"],
                    "reference": row.get("reference"),
                    "correct": extracted is not None and extracted == row["reference_answer"],
                }
            )
        contract = load_contract(GENERATION_CONTRACT)
        return contract.conform(pa.Table.from_pylist(rows, schema=contract.schema()))

    def _output(self, ctx: StageContext, table: pa.Table, metrics: pa.Table) -> StageOutput:
        overall = {m["metric"]: m["value"] for m in metrics.to_pylist() if m["group_kind"] == "all"}
        found = self.overlap()
        meta = {
            "model": self.model_artifact.id,
            "eval_set": self.prompts.id,
            "eval_set_origin": dict(self.prompts.origin),
            "unverifiable": self.prompts.unverifiable,
            "dropped_by_limit": self.prompts.dropped_by_limit,
            **self.config(),
        }
        part_of = ((self.id, "part_of"),)
        rows = table.num_rows
        outputs = [
            Artifact(self.id, "eval", workspace_path(ctx.ws, ctx.folder), rows, meta={**meta, "kind": KIND}),
            Artifact(
                f"{self.id}-generations",
                "generation_eval",
                ctx.path(GENERATIONS_FILE),
                rows,
                GENERATION_CONTRACT,
                parents=part_of,
            ),
            Artifact(
                f"{self.id}-metrics",
                "eval_metric",
                ctx.path(METRICS_FILE),
                metrics.num_rows,
                METRIC_CONTRACT,
                parents=part_of,
            ),
        ]
        return StageOutput(
            outputs=outputs,
            counts={"prompts": rows, "metrics": metrics.num_rows},
            summary={**meta, "kind": KIND, "metrics": overall, "overlap": found.as_dict()},
        )


def _origin_text(origin: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in dict(origin).items() if k != "file_sha256")


# --- metrics -----------------------------------------------------------------------------------------


def generation_metrics(ids: dict[str, str], table: pa.Table) -> pa.Table:
    """eval_metric rows of kind "generation": exact_match, answer_found, finished, generated_tokens,
    overall and per source."""
    correct = np.array(table.column("correct").to_pylist(), dtype=bool)
    found = np.array([a is not None for a in table.column("extracted_answer").to_pylist()], dtype=bool)
    finished = np.array(table.column("finished").to_pylist(), dtype=bool)
    tokens = np.array(table.column("generated_tokens").to_pylist(), dtype=np.float64)
    sources = np.array([s or "unknown" for s in table.column("source").to_pylist()], dtype=object)
    groups = [("all", "all", np.ones(len(correct), dtype=bool))]
    groups += [("source", s, sources == s) for s in sorted(set(sources))]
    values = {"exact_match": correct, "answer_found": found, "finished": finished, "generated_tokens": tokens}
    rows = [
        {
            **ids,
            "kind": KIND,
            "metric": metric,
            "group_kind": kind,
            "group": group,
            "value": float(np.mean(array[mask], dtype=np.float64)) if mask.any() else None,
            "n": int(mask.sum()),
        }
        for kind, group, mask in groups
        for metric, array in values.items()
    ]
    contract = load_contract(METRIC_CONTRACT)
    return contract.conform(pa.Table.from_pylist(rows, schema=contract.schema()))


def evaluate_generation(
    workspace: Workspace | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    prompts: PromptSet,
    executor: Executor = INLINE,
    **settings: Any,
) -> StageRecord:
    """Generate and score through the stage runner (reused when done); checked first, so a bad input
    fails in one line before any model loads."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    stage = GenerationEvalStage(Path(model_path), prompts, ws=ws, **settings)
    stage.check()
    return run_stage(ws, stage, executor)


def read_generations(ws: Workspace, record: StageRecord) -> pa.Table:
    """The generation_eval table of a generation eval record."""
    return pq.read_table(record.output("generation_eval").location(ws))
