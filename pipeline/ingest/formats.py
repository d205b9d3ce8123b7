"""Preference formats: one parser per format, each turning a record (a dict) into one or more
candidate pairs or raising `Reject` with a reason code.

A parser returns a list because some formats expand: `model_solutions` yields one pair per wrong
model solution. Text is kept exactly as given; only the transcript markers of HH-RLHF are syntax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.ingest.fields import (
    Limits,
    Reject,
    check_text,
    messages,
    messages_field,
    nonempty,
    response,
    score,
    short,
    split_last_assistant,
    text_field,
)


@dataclass(frozen=True)
class Candidate:
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    chosen_score: float | None = None
    rejected_score: float | None = None


Parser = Callable[[dict, Limits], list[Candidate]]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def _first_score(record: dict, *names: str) -> float | None:
    for name in names:
        if name in record:
            return score(record[name], name)
    return None


# --- flat ------------------------------------------------------------------------------------------


def parse_flat(record: dict, limits: Limits) -> list[Candidate]:
    """`prompt`, `chosen`, `rejected` strings (other names through the column map); optional
    `system` text and `chosen_score`/`rejected_score` (or UltraFeedback's `score_chosen`/...)."""
    if isinstance(record.get("prompt"), list):
        prompt = messages(record["prompt"], "prompt", limits)
        if not prompt:
            raise Reject("bad_messages", "prompt is an empty message list")
    else:
        prompt = _user(text_field(record, "prompt", limits))
    if record.get("system") is not None:
        prompt = [{"role": "system", "content": check_text(record["system"], "system", limits)}, *prompt]
    chosen = response(record, "chosen", limits)
    rejected = response(record, "rejected", limits)
    return [
        Candidate(
            prompt,
            chosen,
            rejected,
            _first_score(record, "chosen_score", "score_chosen"),
            _first_score(record, "rejected_score", "score_rejected"),
        )
    ]


# --- TRL conversational and chosen/rejected message lists ---------------------------------------


def _conversation_pair(
    record: dict, chosen_field: str, rejected_field: str, limits: Limits
) -> list[Candidate]:
    chosen_messages = messages_field(record, chosen_field, limits)
    rejected_messages = messages_field(record, rejected_field, limits)
    if "prompt" in record and record["prompt"] is not None:
        # Explicit prompt (TRL): chosen/rejected hold only the response message(s).
        prompt = (
            messages(record["prompt"], "prompt", limits)
            if isinstance(record["prompt"], list)
            else _user(check_text(record["prompt"], "prompt", limits))
        )
        if not prompt:
            raise Reject("bad_messages", "prompt is an empty message list")
        chosen = _single_response(chosen_messages, chosen_field)
        rejected = _single_response(rejected_messages, rejected_field)
        return [Candidate(prompt, chosen, rejected)]
    # Implicit prompt: each side is the whole conversation; everything before the last assistant
    # message is the prompt, and the two sides must agree on it.
    chosen_prompt, chosen = split_last_assistant(chosen_messages, chosen_field)
    rejected_prompt, rejected = split_last_assistant(rejected_messages, rejected_field)
    if chosen_prompt != rejected_prompt:
        raise Reject(
            "prompt_mismatch", f"{chosen_field} and {rejected_field} differ before the last assistant message"
        )
    return [Candidate(chosen_prompt, chosen, rejected)]


def _single_response(conversation: list[dict[str, str]], field: str) -> str:
    if len(conversation) != 1:
        raise Reject(
            "bad_messages",
            f"{field} holds {len(conversation)} messages; with an explicit prompt it must hold one",
        )
    if conversation[0]["role"] != "assistant":
        raise Reject(
            "no_assistant_turn", f"{field} message has role {conversation[0]['role']!r}, not assistant"
        )
    return nonempty(conversation[0]["content"], field)


def parse_trl_conversational(record: dict, limits: Limits) -> list[Candidate]:
    """TRL's conversational preference format: `chosen`/`rejected` message lists, with an explicit
    `prompt` (messages or text) or an implicit one (the shared conversation before the last turn)."""
    return _conversation_pair(record, "chosen", "rejected", limits)


def parse_chosen_rejected_messages(record: dict, limits: Limits) -> list[Candidate]:
    """`chosen_messages`/`rejected_messages`: whole conversations whose content may be typed parts."""
    return _conversation_pair(record, "chosen_messages", "rejected_messages", limits)


# --- HH-RLHF transcripts -------------------------------------------------------------------------

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def _transcript_turns(text: str, field: str) -> list[dict[str, str]]:
    """Turns of an HH transcript. The marker and the one space after it are syntax, not content."""
    turns: list[dict[str, str]] = []
    position = 0
    pending_role = None
    while True:
        next_human = text.find(HUMAN, position)
        next_assistant = text.find(ASSISTANT, position)
        candidates = [
            (i, m, r)
            for i, m, r in ((next_human, HUMAN, "user"), (next_assistant, ASSISTANT, "assistant"))
            if i >= 0
        ]
        end = min(candidates)[0] if candidates else len(text)
        chunk = text[position:end]
        if pending_role is None:
            if chunk:
                raise Reject("bad_messages", f"{field} has text before the first Human/Assistant marker")
        else:
            turns.append({"role": pending_role, "content": chunk[1:] if chunk.startswith(" ") else chunk})
        if not candidates:
            return turns
        index, marker, pending_role = min(candidates)
        position = index + len(marker)


def _split_transcript(text: str, field: str) -> tuple[list[dict[str, str]], str]:
    turns = _transcript_turns(text, field)
    if not turns or turns[-1]["role"] != "assistant":
        raise Reject("no_assistant_turn", f"{field} has no final Assistant turn")
    if len(turns) == 1:
        raise Reject("bad_messages", f"{field} has no Human turn before the Assistant turn")
    return turns[:-1], turns[-1]["content"]


def parse_hh_rlhf(record: dict, limits: Limits) -> list[Candidate]:
    """Anthropic HH-RLHF: `chosen`/`rejected` whole transcripts; the prompt is everything up to the
    last `\\n\\nAssistant:` and must be the same on both sides."""
    chosen_text = text_field(record, "chosen", limits)
    rejected_text = text_field(record, "rejected", limits)
    if ASSISTANT not in chosen_text:
        raise Reject("no_assistant_turn", "chosen has no '\\n\\nAssistant:' turn")
    if ASSISTANT not in rejected_text:
        raise Reject("no_assistant_turn", "rejected has no '\\n\\nAssistant:' turn")
    if chosen_text[: chosen_text.rfind(ASSISTANT)] != rejected_text[: rejected_text.rfind(ASSISTANT)]:
        raise Reject(
            "prompt_mismatch", "chosen and rejected transcripts differ before their last Assistant turn"
        )
    chosen_prompt, chosen = _split_transcript(chosen_text, "chosen")
    _, rejected = _split_transcript(rejected_text, "rejected")
    return [Candidate(chosen_prompt, nonempty(chosen, "chosen"), nonempty(rejected, "rejected"))]


# --- sharegpt / LLaMA-Factory ----------------------------------------------------------------------


def parse_sharegpt(record: dict, limits: Limits) -> list[Candidate]:
    """LLaMA-Factory's sharegpt preference format: `conversations` (from/value, system messages kept),
    `chosen` and `rejected` single message objects; an optional top-level `system` text."""
    prompt = messages_field(record, "conversations", limits)
    if record.get("system") is not None:
        prompt = [{"role": "system", "content": check_text(record["system"], "system", limits)}, *prompt]
    if not prompt:
        raise Reject("bad_messages", "conversations is empty")
    sides = []
    for field in ("chosen", "rejected"):
        if field not in record:
            raise Reject("missing_field", f"no field {field!r}")
        value = record[field]
        if isinstance(value, dict):
            message = messages([value], field, limits)[0]
            if message["role"] != "assistant":
                raise Reject("no_assistant_turn", f"{field} has role {message['role']!r}, not assistant")
            sides.append(nonempty(message["content"], field))
        else:
            sides.append(nonempty(check_text(value, field, limits), field))
    return [Candidate(prompt, sides[0], sides[1])]


# --- pairwise judgements ---------------------------------------------------------------------------

RESPONSE_FIELDS = (("response1", "response2"), ("response_a", "response_b"), ("output_1", "output_2"))
TIE_LABELS = {0, "0", "tie", "Tie", "tie (bothbad)"}
FIRST_LABELS = {1, "1", "a", "A", "model_a", "response1", "response_a"}
SECOND_LABELS = {2, "2", "b", "B", "model_b", "response2", "response_b"}


def _label_fields(record: dict) -> list[str]:
    names = sorted(k for k in record if isinstance(k, str) and k.startswith("annotator"))
    return names or [k for k in ("label", "winner", "preference") if k in record][:1]


def _vote(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise Reject("invalid_label", f"{field} is the boolean {value}")
    if not isinstance(value, (int, float, str)):  # a list or object cannot be looked up as a label
        raise Reject("invalid_label", f"{field} is {type(value).__name__} {short(value)}; expected 0, 1 or 2")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value in TIE_LABELS:
        return 0
    if value in FIRST_LABELS:
        return 1
    if value in SECOND_LABELS:
        return 2
    raise Reject("invalid_label", f"{field} is {short(value)}; expected 0 (tie), 1 or 2")


def parse_pairwise_judgement(record: dict, limits: Limits) -> list[Candidate]:
    """Two responses and one or more labels (0 tie, 1 first better, 2 second better), e.g. PandaLM's
    `annotator1..3`. The strict majority decides; a tie or no majority is rejected as `tie`. The
    prompt is `instruction`, followed by a blank line and `input` when the input is not empty."""
    instruction = text_field(record, "instruction", limits)
    extra = record.get("input")
    if extra is not None:
        extra = check_text(extra, "input", limits)
    prompt_text = instruction + ("\n\n" + extra if extra else "")
    names = next((pair for pair in RESPONSE_FIELDS if pair[0] in record), RESPONSE_FIELDS[0])
    first = response(record, names[0], limits)
    second = response(record, names[1], limits)
    label_fields = _label_fields(record)
    if not label_fields:
        raise Reject("missing_field", "no label field (annotator*, label, winner or preference)")
    votes = [_vote(record[name], name) for name in label_fields if record[name] is not None]
    if not votes:
        raise Reject("null_field", f"every label is null ({', '.join(label_fields)})")
    counts = Counter(votes).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1] or counts[0][0] == 0:
        raise Reject("tie", f"labels {votes}: no majority for one response")
    chosen, rejected = (first, second) if counts[0][0] == 1 else (second, first)
    return [Candidate(_user(prompt_text), chosen, rejected)]


# --- scored completions ----------------------------------------------------------------------------

SCORE_KEYS = ("overall_score", "score", "rating")
TEXT_KEYS = ("response", "text", "completion", "content")


def parse_scored_completions(record: dict, limits: Limits) -> list[Candidate]:
    """UltraFeedback-style: a prompt (`prompt` or `instruction`) and `completions`, each with a text
    and a rating. The best-rated completion (first on ties) is chosen, the lowest-rated one rejected;
    completions rated like the best are never used as rejected. Scores go to chosen/rejected_score."""
    prompt_field = "prompt" if "prompt" in record else "instruction"
    prompt = _user(text_field(record, prompt_field, limits))
    if "completions" not in record:
        raise Reject("missing_field", "no field 'completions'")
    completions = record["completions"]
    if completions is None:
        raise Reject("null_field", "completions is null")
    if not isinstance(completions, list):
        raise Reject("wrong_type", f"completions is {type(completions).__name__}, not a list")
    rated: list[tuple[float, str]] = []
    for index, completion in enumerate(completions):
        where = f"completions[{index}]"
        if not isinstance(completion, dict):
            raise Reject("wrong_type", f"{where} is {type(completion).__name__}, not an object")
        text_key = next((k for k in TEXT_KEYS if k in completion), None)
        score_key = next((k for k in SCORE_KEYS if k in completion), None)
        if text_key is None or score_key is None:
            raise Reject(
                "missing_field",
                f"{where} needs a text ({'/'.join(TEXT_KEYS)}) and a score ({'/'.join(SCORE_KEYS)})",
            )
        value = score(completion[score_key], f"{where}.{score_key}")
        if value is None:
            continue  # an unrated completion cannot be ranked
        rated.append(
            (value, nonempty(check_text(completion[text_key], f"{where}.{text_key}", limits), where))
        )
    if len(rated) < 2:
        raise Reject("no_preference", f"{len(rated)} rated completion(s); a pair needs two")
    best = max(rated, key=lambda item: item[0])
    worst = min(rated, key=lambda item: item[0])
    if worst[0] == best[0]:
        raise Reject("no_preference", f"every completion is rated {best[0]}")
    return [Candidate(prompt, best[1], worst[1], best[0], worst[0])]


# --- model solutions (GSM8K example_model_solutions) ----------------------------------------------


def parse_model_solutions(record: dict, limits: Limits) -> list[Candidate]:
    """`question`, `ground_truth`, and per model an object `{is_correct, solution}`: each wrong
    solution becomes a pair (ground truth chosen, wrong solution rejected), so one record can
    expand into several pairs. Correct solutions are not used."""
    prompt = _user(text_field(record, "question", limits))
    chosen = response(record, "ground_truth", limits)
    models = [(k, v) for k, v in record.items() if isinstance(v, dict) and "is_correct" in v]
    if not models:
        raise Reject("missing_field", "no model solution objects ({is_correct, solution})")
    for model, solution in models:
        # Only true/false (or null: unknown, unused) say whether a solution is wrong; a 0, "false" or
        # NaN would otherwise pass for "correct" and silently drop a pair.
        if solution["is_correct"] is not None and not isinstance(solution["is_correct"], bool):
            flag = solution["is_correct"]
            raise Reject(
                "wrong_type", f"{model}.is_correct is {type(flag).__name__} {short(flag)}, not true/false"
            )
    pairs = []
    problems = []
    for model, solution in models:
        if solution["is_correct"] is not False:
            continue
        try:
            rejected = nonempty(
                check_text(solution.get("solution"), f"{model}.solution", limits), f"{model}.solution"
            )
        except Reject as reject:  # one bad solution does not spoil the record's other pairs
            problems.append(f"{reject.reason} ({reject.detail})")
            continue
        pairs.append(Candidate(prompt, chosen, rejected, 1.0, 0.0))
    if not pairs:
        detail = "no usable wrong solution" + (
            f": {'; '.join(problems)}" if problems else " (every model was correct)"
        )
        raise Reject("no_preference", detail)
    return pairs


FORMATS: dict[str, Parser] = {
    "flat": parse_flat,
    "trl_conversational": parse_trl_conversational,
    "hh_rlhf": parse_hh_rlhf,
    "sharegpt": parse_sharegpt,
    "chosen_rejected_messages": parse_chosen_rejected_messages,
    "pairwise_judgement": parse_pairwise_judgement,
    "scored_completions": parse_scored_completions,
    "model_solutions": parse_model_solutions,
}
