"""From `dpop_shard` rows to summed response log-probabilities, in one forward pass per batch.

The collator lays a batch out in one of three ways (`packing`), and every layout scores exactly the
same tokens with the same context, so a pair's log-probs do not depend on the layout (tested to 1e-5
in float32, summed and per token):

* `none`: prompt+chosen and prompt+rejected of every pair as rows of one right-padded batch (chosen
  rows first, then rejected, TRL's layout). With right padding each real token sits at its natural
  position and, under causal attention, only sees real tokens before it: the causal mask alone is
  the exact mask for every scored token, so the padding mask is not passed to the model by default
  (an explicit mask moves SDPA off its causal kernel, about 2x slower attention on CPU).
  `pass_attention_mask=True` passes it (for a model that is not purely causal).
* `padding_free`: the 2B sequences packed back to back, `position_ids` restarting at 0 for each, no
  attention mask. FlashAttention 2/3 turns the restarts into varlen boundaries (no padding, no
  mask, one long row); sdpa/eager/flex get the block-diagonal causal mask that transformers'
  `masking_utils` builds from the restarts itself (`find_packed_sequence_indices`). A dense mask
  costs attention work over the whole row (2x slower than padding for one row of a batch of 8 pairs
  on CPU), so for those the sequences are packed first-fit decreasing into rows no longer than the
  batch's longest sequence.
* `shared_prompt`: each pair as one sequence [prompt | chosen | rejected], the prompt computed once
  (pairs packed into rows as above, each pair a block of its own). A 4D
  mask keeps attention causal except that rejected tokens do not see chosen ones, and rejected's
  positions continue from the prompt's end as chosen's do, so every rejected token sees what it
  sees in its own sequence. The logits of the prompt's last token predict the first token of both
  answers. Needs an attention that takes a 4D mask (sdpa: boolean; eager/flex: additive float).

Every layout names the positions whose logits are needed (`logits_mask`: the position before each
response token): the model is asked for those only (`logits_to_keep` as a 2D boolean mask, which
skips the LM head on prompt and padding positions), and log-softmax is taken only at the labels
(gather − logsumexp) instead of materialising it. The scored tokens are listed flat, sequence by
sequence (chosen of pair 0…B−1, then rejected), in every layout: `score_index` (which kept logit
row), `score_labels` (the token) and `score_sequence` (which of the 2B sequences).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
PACKINGS = ("none", "padding_free", "shared_prompt")
# Attention implementations that build their mask from position_ids restarts or take a 4D mask.
MASK_ATTENTIONS = ("sdpa", "eager", "flex_attention")


def _mask_slicing_supported() -> bool:
    """transformers 5 models take a 2D boolean `logits_to_keep` (`slice_logits_to_keep`); older ones
    take an int only."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


MASK_SLICING = _mask_slicing_supported()


def resolve_packing(
    requested: str, attn_implementation: str | None, local_attention: bool = False
) -> tuple[str, str | None]:
    """The layout to use for `requested` with this attention implementation, and a one-line reason
    when it differs (the caller warns). FlashAttention (varlen) packs but takes no 4D mask; sdpa,
    eager and flex_attention do both; anything else (a paged or custom kernel) gets padding.
    `local_attention`: the model has sliding-window or chunked layers, whose masks transformers
    builds itself (packed ones included); the shared prompt's 4D mask is a full causal one, so it
    would widen them: packed sequences instead."""
    if requested not in PACKINGS:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, got {requested!r}")
    implementation = attn_implementation or "eager"
    varlen = "flash" in implementation
    masks = implementation in MASK_ATTENTIONS
    if requested == "shared_prompt" and (local_attention or not masks):
        fallback = "padding_free" if varlen or masks else "none"
        why = (
            "the model has sliding-window or chunked attention layers, which a 4D mask would override"
            if local_attention
            else f"it needs an attention implementation that takes a 4D mask ({', '.join(MASK_ATTENTIONS)}); "
            f"{implementation} does not"
        )
        return fallback, f"packing shared_prompt: {why}: using {fallback}"
    if requested == "padding_free" and not (varlen or masks):
        return "none", (
            f"packing padding_free needs FlashAttention or one of {', '.join(MASK_ATTENTIONS)}; "
            f"{implementation} is neither: using padded batches"
        )
    return requested, None


@dataclass(frozen=True)
class _Scored:
    """The scored tokens of one logical sequence: its row, the positions whose logits predict its
    response tokens, and the positions of those tokens."""

    row: int
    predictors: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class PairCollator:
    """Collate dpop_shard rows (mappings with `prompt_ids`, `chosen_ids`, `rejected_ids`, optionally
    `common_prefix_len` and the `ref_*` log-probs) into one batch laid out as `packing` says.

    Output keys, every layout: `input_ids` (R, T); `logits_mask` (R, T) bool; `score_index`,
    `score_labels`, `score_sequence`, `chosen_post_edit` (K,) over the scored tokens (chosen tokens
    from `common_prefix_len` on are the tokens after the first edit); `prompt_lengths` and
    `sequence_lengths` (2B,: prompt and prompt+response tokens of each logical sequence); and
    `ref_chosen_logps` / `ref_rejected_logps` (B, float32) when every row has them; `weight` (B,
    float32) when a row has one (`dpop select`'s per-pair loss weights; a missing one is 1).
    `none` adds `attention_mask` (2B, T); `padding_free` adds `position_ids`; `shared_prompt` adds
    `position_ids` and `attention_mask` (R, 1, T, T): boolean, or additive float (0 / float32 min)
    when `additive_mask` (eager and flex_attention add the mask to the scores).

    `varlen` (padding_free): true puts every sequence in one row (FlashAttention's varlen needs no
    mask, so a long row costs nothing); false packs them first-fit decreasing into rows no longer
    than the batch's longest sequence (a dense block-diagonal mask costs work over the whole row:
    bounded rows bound it). `shared_prompt` packs its pairs the same bounded way.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    packing: str = "none"
    additive_mask: bool = False
    varlen: bool = False

    def __post_init__(self) -> None:
        if self.packing not in PACKINGS:
            raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, got {self.packing!r}")

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        prompts = [_ids(row, "prompt_ids") for row in rows]
        for row, prompt in zip(rows, prompts, strict=True):
            if len(prompt) == 0:  # nothing would predict the first response token
                raise ValueError(f"pair {row.get('pair_id', '?')} has an empty prompt_ids")
        responses = [_ids(row, "chosen_ids") for row in rows] + [_ids(row, "rejected_ids") for row in rows]
        layout = {"none": self._padded, "padding_free": self._packed, "shared_prompt": self._shared}
        batch, scored = layout[self.packing](prompts, responses)
        batch.update(_score_arrays(batch["input_ids"], scored, rows))
        batch["prompt_lengths"] = torch.tensor([len(p) for p in prompts + prompts], dtype=torch.long)
        lengths = [len(p) + len(r) for p, r in zip(prompts + prompts, responses, strict=True)]
        batch["sequence_lengths"] = torch.tensor(lengths, dtype=torch.long)
        if all(_present(row.get(column)) for row in rows for column in REF_COLUMNS):
            for column in REF_COLUMNS:
                batch[column] = torch.tensor([float(row[column]) for row in rows], dtype=torch.float32)
        if any(_present(row.get("weight")) for row in rows):  # a selection's weights; a null one is 1
            weights = [float(row["weight"]) if _present(row.get("weight")) else 1.0 for row in rows]
            batch["weight"] = torch.tensor(weights, dtype=torch.float32)
        return batch

    def _width(self, longest: int) -> int:
        if self.pad_to_multiple_of:
            return -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return longest

    # ----- layouts: (tensors, scored tokens of each of the 2B sequences in order) -----
    def _padded(self, prompts, responses) -> tuple[dict[str, torch.Tensor], list[_Scored]]:
        prompts = prompts + prompts
        width = self._width(max(len(p) + len(r) for p, r in zip(prompts, responses, strict=True)))
        input_ids = np.full((len(responses), width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((len(responses), width), dtype=np.int64)
        scored = []
        for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            start, end = len(prompt), len(prompt) + len(response)
            input_ids[index, :start] = prompt
            input_ids[index, start:end] = response
            attention_mask[index, :end] = 1
            scored.append(_Scored(index, np.arange(start - 1, end - 1), np.arange(start, end)))
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }, scored

    def _packed(self, prompts, responses) -> tuple[dict[str, torch.Tensor], list[_Scored]]:
        pairs = len(prompts)
        sequences = [np.concatenate([prompts[s % pairs], r]) for s, r in enumerate(responses)]
        lengths = [len(s) for s in sequences]
        rows = _pack_rows(lengths, None if self.varlen else max(lengths))
        width = self._width(max(sum(lengths[s] for s in row) for row in rows))
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        position_ids = np.zeros((len(rows), width), dtype=np.int64)
        scored: list[Any] = [None] * len(sequences)
        for row_index, members in enumerate(rows):
            offset = 0
            for s in members:
                end, start = offset + lengths[s], offset + len(prompts[s % pairs])
                input_ids[row_index, offset:end] = sequences[s]
                position_ids[row_index, offset:end] = np.arange(lengths[s])
                scored[s] = _Scored(row_index, np.arange(start - 1, end - 1), np.arange(start, end))
                offset = end
            # the tail padding is a sequence of its own (positions restart): nothing real sees it
            position_ids[row_index, offset:] = np.arange(width - offset)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "position_ids": torch.from_numpy(position_ids),
        }, scored

    def _shared(self, prompts, responses) -> tuple[dict[str, torch.Tensor], list[_Scored]]:
        pairs = len(prompts)
        chosen, rejected = responses[:pairs], responses[pairs:]
        lengths = [len(p) + len(c) + len(r) for p, c, r in zip(prompts, chosen, rejected, strict=True)]
        rows = _pack_rows(lengths, max(lengths))  # the mask is dense anyway: fill rows, bound them
        width = self._width(max(sum(lengths[i] for i in row) for row in rows))
        input_ids = np.full((len(rows), width), self.pad_token_id, dtype=np.int64)
        position_ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width, width), dtype=bool)
        scored: list[Any] = [None] * (2 * pairs)
        for row_index, members in enumerate(rows):
            offset = 0
            for i in members:
                p, c, r = prompts[i], chosen[i], rejected[i]
                start, middle, end = offset + len(p), offset + len(p) + len(c), offset + lengths[i]
                input_ids[row_index, offset:end] = np.concatenate([p, c, r])
                # rejected's positions continue from the prompt's end, as chosen's do
                position_ids[row_index, offset:middle] = np.arange(middle - offset)
                position_ids[row_index, middle:end] = len(p) + np.arange(len(r))
                mask[row_index, offset:end, offset:end] = np.tri(lengths[i], dtype=bool)
                mask[row_index, middle:end, start:middle] = False  # rejected does not see chosen
                scored[i] = _Scored(row_index, np.arange(start - 1, middle - 1), np.arange(start, middle))
                # the prompt's last token predicts rejected's first token too
                predictors = np.concatenate([[start - 1], np.arange(middle, end - 1)]).astype(np.int64)
                scored[pairs + i] = _Scored(row_index, predictors, np.arange(middle, end))
                offset = end
            # tail padding: causal among itself (no fully masked row: sdpa would give NaN), unseen
            position_ids[row_index, offset:] = np.arange(width - offset)
            mask[row_index, offset:, offset:] = np.tri(width - offset, dtype=bool)
        attention = torch.from_numpy(mask).unsqueeze(1)
        if self.additive_mask:
            attention = torch.zeros(attention.shape).masked_fill_(~attention, torch.finfo(torch.float32).min)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "position_ids": torch.from_numpy(position_ids),
            "attention_mask": attention,
        }, scored


def has_local_attention(config: Any) -> bool:
    """Whether a model config has sliding-window or chunked attention layers (Mistral, Gemma 2/3,
    Qwen2 with use_sliding_window, Llama 4 …): transformers 5 lists them in `layer_types`."""
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        return any(kind != "full_attention" for kind in layer_types)
    return getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True)


def _ids(row: Mapping[str, Any], column: str) -> np.ndarray:
    return np.asarray(row[column], dtype=np.int64)


def _pack_rows(lengths: list[int], capacity: int | None) -> list[list[int]]:
    """Sequence indices per row: all in one row (no capacity), else first-fit decreasing into rows
    of at most `capacity` tokens; within a row, sequences keep their original order."""
    if capacity is None:
        return [list(range(len(lengths)))]
    rows: list[list[int]] = []
    room: list[int] = []
    for s in sorted(range(len(lengths)), key=lambda s: -lengths[s]):
        fit = next((r for r, free in enumerate(room) if free >= lengths[s]), None)
        if fit is None:
            rows.append([])
            room.append(capacity)
            fit = len(rows) - 1
        rows[fit].append(s)
        room[fit] -= lengths[s]
    return [sorted(row) for row in rows]


def _score_arrays(
    input_ids: torch.Tensor, scored: list[_Scored], rows: Sequence[Mapping[str, Any]]
) -> dict[str, torch.Tensor]:
    """The flat scored-token arrays of a layout (module doc), sequence by sequence."""
    width = input_ids.shape[1]
    logits_mask = np.zeros(tuple(input_ids.shape), dtype=bool)
    for item in scored:
        logits_mask[item.row, item.predictors] = True
    # kept logits come out in row-major order of the mask: the rank of a position is its row there
    rank = np.cumsum(logits_mask.ravel()) - 1
    ids = input_ids.numpy()
    pairs = len(rows)
    post_edit = []
    for s, item in enumerate(scored):
        flags = np.zeros(len(item.labels), dtype=bool)
        if s < pairs:  # chosen tokens after the first edit
            flags[int(rows[s].get("common_prefix_len", 0) or 0) :] = True
        post_edit.append(flags)
    return {
        "logits_mask": torch.from_numpy(logits_mask),
        "score_index": torch.from_numpy(
            np.concatenate([rank[item.row * width + item.predictors] for item in scored]).astype(np.int64)
        ),
        "score_labels": torch.from_numpy(np.concatenate([ids[item.row, item.labels] for item in scored])),
        "score_sequence": torch.from_numpy(
            np.concatenate([np.full(len(item.labels), s, dtype=np.int64) for s, item in enumerate(scored)])
        ),
        "chosen_post_edit": torch.from_numpy(np.concatenate(post_edit)),
    }


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


@dataclass
class PairLogps:
    """Summed response log-probs per pair, and the per-token values they came from."""

    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)
    per_token: torch.Tensor  # (K,): log p(token | context) of each scored token, in `score_*` order


def token_logps_at(logits: torch.Tensor, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits[rows])[labels], in float32, without materialising the full log-softmax
    (one logsumexp per kept logit row; a row used twice, as in shared_prompt, is reduced once)."""
    logits = logits.float()
    return logits[rows, labels] - torch.logsumexp(logits, dim=-1)[rows]


def pair_logps(model: Any, batch: Mapping[str, torch.Tensor], pass_attention_mask: bool = False) -> PairLogps:
    """One forward pass of the batch (any layout); summed log-probs of each response given its prompt.
    `model` is a causal LM or a callable taking its keyword arguments (`Precision.forward_of`)."""
    inputs: dict[str, Any] = {"input_ids": batch["input_ids"], "use_cache": False}
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    attention_mask = batch.get("attention_mask")
    if attention_mask is not None and (attention_mask.dim() == 4 or pass_attention_mask):
        inputs["attention_mask"] = attention_mask
    logits = _kept_logits(model, inputs, batch["logits_mask"])
    per_token = token_logps_at(logits, batch["score_index"], batch["score_labels"])
    sequences = batch["sequence_lengths"].shape[0]
    sums = per_token.new_zeros(sequences).index_add(0, batch["score_sequence"], per_token)
    chosen, rejected = sums.chunk(2, dim=0)
    return PairLogps(chosen=chosen, rejected=rejected, per_token=per_token)


def _kept_logits(model: Any, inputs: dict[str, Any], logits_mask: torch.Tensor) -> torch.Tensor:
    """The logits at the `logits_mask` positions, (M, V) in row-major order."""
    kept = int(logits_mask.sum())
    if MASK_SLICING:
        logits = model(**inputs, logits_to_keep=logits_mask).logits
    else:  # an int only: keep from the first needed column on, then pick the positions here
        first = int(logits_mask.any(dim=0).nonzero()[0])
        logits = model(**inputs, logits_to_keep=logits_mask.shape[1] - first).logits
        logits = logits[logits_mask[:, first:]]
    if logits.dim() != 2 or logits.shape[0] != kept:
        raise RuntimeError(
            f"the model returned logits of shape {tuple(logits.shape)} for {kept} kept positions: its "
            "forward does not take a 2D boolean logits_to_keep (transformers' slice_logits_to_keep)"
        )
    return logits


def post_edit_stats(per_token: torch.Tensor, post_edit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of chosen per-token log-probs after the first edit (`common_prefix_len` on)."""
    mask = post_edit.to(per_token.dtype)
    return (per_token.detach() * mask).sum(), mask.sum()
