"""From `dpop_shard` rows to summed response log-probabilities, in one forward pass per batch.

The collator puts prompt+chosen and prompt+rejected of every pair into one right-padded batch
(chosen rows first, then rejected, TRL's layout), so the policy runs once per step. With right
padding each real token sits at its natural position (0, 1, …) and, under causal attention, only
sees real tokens before it: the causal mask alone is already the exact mask for every scored token,
and pads (whose outputs are never read) sit after them. So by default the padding mask is not passed
to the model: an explicit mask moves SDPA off its causal kernel and roughly doubles attention time on
CPU. `pass_attention_mask=True` passes it (for a model that is not purely causal). Either way a pair's
log-prob does not depend on what else is in the batch (tested to 1e-5, both ways).

Only the logits of response positions are needed: the forward asks the model for the last
`logits_to_keep` positions (from the shortest prompt on), which skips the LM head on prompt tokens,
and computes log-softmax only at the labels (gather − logsumexp) instead of materialising it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclass(frozen=True)
class PairCollator:
    """Collate dpop_shard rows (mappings with `prompt_ids`, `chosen_ids`, `rejected_ids`, optionally
    `common_prefix_len` and the `ref_*` log-probs) into one padded batch of 2×B sequences.

    Output keys: `input_ids`, `attention_mask`, `response_mask` (2B, T; response tokens of row i are
    where the mask is 1), `chosen_post_edit_mask` (B, T; chosen response tokens from
    `common_prefix_len` on, the tokens after the first edit), `prompt_lengths` (2B), and
    `ref_chosen_logps` / `ref_rejected_logps` (B, float32) when every row has them.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("cannot collate an empty batch")
        prompts = [np.asarray(row["prompt_ids"], dtype=np.int64) for row in rows]
        responses = [np.asarray(row["chosen_ids"], dtype=np.int64) for row in rows]
        responses += [np.asarray(row["rejected_ids"], dtype=np.int64) for row in rows]
        prompts = prompts + prompts
        lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of

        count = len(responses)
        input_ids = np.full((count, width), self.pad_token_id, dtype=np.int64)
        attention_mask = np.zeros((count, width), dtype=np.int64)
        response_mask = np.zeros((count, width), dtype=bool)
        for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            start, end = len(prompt), len(prompt) + len(response)
            input_ids[index, :start] = prompt
            input_ids[index, start:end] = response
            attention_mask[index, :end] = 1
            response_mask[index, start:end] = True

        pairs = len(rows)
        post_edit_mask = np.zeros((pairs, width), dtype=bool)
        for index, row in enumerate(rows):
            start = len(prompts[index]) + int(row.get("common_prefix_len", 0) or 0)
            post_edit_mask[index, start : len(prompts[index]) + len(responses[index])] = True

        batch = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "response_mask": torch.from_numpy(response_mask),
            "chosen_post_edit_mask": torch.from_numpy(post_edit_mask),
            "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        }
        if all(_present(row.get(column)) for row in rows for column in REF_COLUMNS):
            for column in REF_COLUMNS:
                batch[column] = torch.tensor([float(row[column]) for row in rows], dtype=torch.float32)
        return batch


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value))


@dataclass
class PairLogps:
    """Summed response log-probs per pair, and the per-token values they came from."""

    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)
    per_token: torch.Tensor  # (2B, T): log p(token t | tokens < t) at response positions, 0 elsewhere


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position, in float32, without materialising the full log-softmax."""
    logits = logits.float()
    picked = torch.gather(logits, -1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def pair_logps(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], pass_attention_mask: bool = False
) -> PairLogps:
    """One forward pass of the 2B sequences; summed log-probs of each response given its prompt."""
    input_ids = batch["input_ids"]
    response_mask = batch["response_mask"]
    width = input_ids.shape[1]
    # Logits at position t predict token t+1; the first response token sits at the prompt length.
    first_needed = int(batch["prompt_lengths"].min()) - 1
    keep = width - first_needed
    outputs = model(
        input_ids=input_ids,
        attention_mask=batch["attention_mask"] if pass_attention_mask else None,
        use_cache=False,
        logits_to_keep=keep,
    )
    logits = outputs.logits[:, : keep - 1]  # the last position predicts nothing we score
    labels = input_ids[:, first_needed + 1 :]
    scored = token_logps(logits, labels) * response_mask[:, first_needed + 1 :]
    per_token = torch.nn.functional.pad(scored, (first_needed + 1, 0))
    sums = per_token.sum(dim=1)
    chosen, rejected = sums.chunk(2, dim=0)
    return PairLogps(chosen=chosen, rejected=rejected, per_token=per_token)


def post_edit_stats(
    per_token: torch.Tensor, post_edit_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of chosen per-token log-probs after the first edit (`common_prefix_len` on)."""
    chosen_tokens = per_token[: post_edit_mask.shape[0]].detach()
    mask = post_edit_mask.to(chosen_tokens.dtype)
    return (chosen_tokens * mask).sum(), mask.sum()
