"""Tokenise pairs into dpop_shard rows with a Hugging Face tokenizer from a local folder.

The folder is read without transformers (which imports torch: seconds and hundreds of MiB per
process): `tokenizer.json` through the `tokenizers` library, the special tokens from
`tokenizer_config.json` (and the legacy `special_tokens_map.json`), the chat template from
`chat_template.jinja` / `additional_chat_templates/` / `tokenizer_config.json`, rendered with jinja2 in
the sandbox and with the options, filters and globals transformers uses (`FastTokenizer`). The ids are
those of transformers' `apply_chat_template(..., add_generation_prompt=True)` and
`tokenizer(text, add_special_tokens=False)` (tests/pipeline/test_tokenize.py checks it).

Prompt: the chat template over the prompt messages with `add_generation_prompt=True`; without a chat
template, the plain template

    <bos>User: <content>\\n\\nAssistant: <content>\\n\\n ... Assistant:<space>

(roles title-cased, messages joined by a blank line, BOS only when the tokenizer has one). Responses
are tokenised as they are, without special tokens, and EOS is appended to each.

Truncation rule ("keep_prompt_end_reject_long_response"): the prompt keeps its LAST
`max_prompt_length` tokens (the question sits at the end of a conversation); then a pair whose prompt
plus chosen or prompt plus rejected exceeds `max_length` is rejected as `too_long` (stage tokenize),
never cut, because a cut response is a different response.

Texts go through the Rust tokenizer in calls of 1,024 on two background threads (`PairTokenizer.start`
returns at once; `finish` waits), so a caller renders, filters and writes one batch while the next is
encoded: the encoder releases the GIL, and while one thread copies a call's ids out the other's call
keeps every core encoding. Ids never become Python lists of lists: each call's encodings are read into
one flat int32 array, and truncation, EOS and the common prefix are numpy operations over flat token
arrays and offsets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.curate.filters import PROMPT_KEY
from pipeline.identity import file_sha256, tree_sha256

TRUNCATION_RULE = "keep_prompt_end_reject_long_response"
# Texts per encoder call: an Encoding holds ~76 bytes a token (tokens, offsets, masks) until its ids
# are copied out, so a chunk bounds that to a few MB whatever the batch.
_TOKENIZE_CHUNK = 1024
PLAIN_TEMPLATE = "<bos>{Role}: {content}\\n\\n... Assistant: "
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
LEGACY_SPECIAL_TOKENS_FILE = "special_tokens_map.json"
TEMPLATE_FILE = "chat_template.jinja"
TEMPLATES_DIR = "additional_chat_templates"
# transformers' named special tokens (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES)
SPECIAL_TOKEN_NAMES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def tokenizer_sha256(path: Path) -> str:
    """sha256 of the folder's `tokenizer.json` (the rule dpop.model_io.check_tokenizer applies), so a
    model folder with the same tokenizer matches the shards and its weights are not hashed; a folder
    without one (a slow tokenizer) falls back to the hash of the whole folder."""
    tokenizer_json = Path(path) / TOKENIZER_FILE
    return file_sha256(tokenizer_json) if tokenizer_json.is_file() else tree_sha256(path)


# --- the tokenizer folder, without transformers -------------------------------------------------------


class FastTokenizer:
    """A Hugging Face tokenizer folder as transformers (v5) loads it, read with `tokenizers` + jinja2.

    - `backend`: `tokenizers.Tokenizer.from_file(tokenizer.json)` without truncation or padding, with
      the special tokens the config names but tokenizer.json lacks added (as transformers adds them);
    - `special_tokens`: the named special tokens (`bos_token`, `eos_token`, ..., and model-specific
      `*_token` keys) as strings: what a chat template sees;
    - `chat_template`: the default template (`chat_template.jinja`, else the config's `chat_template`;
      of several named templates, the one named `default`), or None.
    """

    def __init__(self, path: str | os.PathLike[str]):
        from tokenizers import Tokenizer

        self.path = Path(path)
        tokenizer_json = self.path / TOKENIZER_FILE
        if not tokenizer_json.is_file():
            raise FileNotFoundError(
                f"tokenizer folder {self.path} has no {TOKENIZER_FILE} (a fast tokenizer): convert it "
                "once with transformers.AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
            )
        config = _read_json(self.path / CONFIG_FILE)
        self.special_tokens, extra_tokens = _special_tokens(self.path, config)
        self.backend = Tokenizer.from_file(str(tokenizer_json))
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
        _add_missing_tokens(self.backend, config, [*self.special_tokens.values(), *extra_tokens])
        self.chat_template = _chat_template(self.path, config)

    def token_id(self, name: str) -> int | None:
        """Id of a named special token (`eos_token`, ...), None when the folder names none."""
        token = self.special_tokens.get(name)
        return None if token is None else self.backend.token_to_id(token)

    def render(self, conversations: Sequence[Sequence[dict[str, Any]]]) -> list[str]:
        """The chat template over each conversation with the generation prompt, as transformers'
        `apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)`."""
        if self.chat_template is None:
            raise ValueError(f"tokenizer {self.path} has no chat template")
        from jinja2.runtime import new_context

        template = _compiled_template(self.chat_template)
        # Template.render's work without its per-call overhead: it copies the template's globals (a
        # ChainMap, iterated in Python) into every call's context; here they are flattened once
        flat_globals = dict(template.globals)
        base = {**flat_globals, "tools": None, "documents": None, "add_generation_prompt": True}
        base.update(self.special_tokens)
        environment, name, blocks, body = (
            template.environment,
            template.name,
            template.blocks,
            template.root_render_func,
        )
        texts = []
        for messages in conversations:
            variables = {**base, "messages": [_template_message(m) for m in messages]}
            try:
                context = new_context(environment, name, blocks, variables, shared=True, globals=flat_globals)
                texts.append(environment.concat(body(context)))
            except Exception:  # rendered again the ordinary way for jinja's error report
                template.render({k: v for k, v in variables.items() if k not in flat_globals})
                raise
        return texts

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Flat int32 ids and int64 offsets of `texts`, without special tokens."""
        chunks = [
            self.encode_chunk(texts[i : i + _TOKENIZE_CHUNK]) for i in range(0, len(texts), _TOKENIZE_CHUNK)
        ]
        return _joined(chunks, len(texts))

    def encode_chunk(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(flat int32 ids, int64 length per text) of one call to the Rust encoder. Holds the GIL only
        to copy the ids out (the encoder releases it), so it can run on a thread beside other work."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
        # one flat int32 array straight from the encodings: no list per text, no Arrow conversion of
        # nested lists (that was ~70% of the cost of reading ids out)
        ids = chain.from_iterable(e.ids for e in encodings)
        return np.fromiter(ids, np.int32, int(lengths.sum())), lengths


def _joined(chunks: Sequence[tuple[np.ndarray, np.ndarray]], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of (ids, lengths) as one flat list array (values, offsets)."""
    offsets = np.zeros(rows + 1, dtype=np.int64)
    if chunks:
        np.cumsum(np.concatenate([lengths for _, lengths in chunks]), out=offsets[1:])
    values = np.concatenate([ids for ids, _ in chunks]) if chunks else np.zeros(0, np.int32)
    return values, offsets


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _token_text(value: Any) -> str | None:
    """A special token as the config stores it: a string, or an AddedToken dict with `content`."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _special_tokens(folder: Path, config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(named special tokens, extra special tokens) as transformers v5 reads them: the config's values,
    overridden by `special_tokens_map.json` when the config has no `added_tokens_decoder` (legacy
    folders); named = the standard names, `extra_special_tokens`/`model_specific_special_tokens` given
    as a dict, and any other `*_token` key holding a token."""
    values = dict(config)
    legacy = folder / LEGACY_SPECIAL_TOKENS_FILE
    if "added_tokens_decoder" not in config and legacy.is_file():
        values.update(_read_json(legacy))
    named: dict[str, str] = {}
    for key, value in values.items():
        text = _token_text(value)
        if text is not None and (key in SPECIAL_TOKEN_NAMES or key.endswith("_token")):
            named[key] = text
    extra: list[str] = []
    for key in ("extra_special_tokens", "additional_special_tokens", "model_specific_special_tokens"):
        group = values.get(key)
        if isinstance(group, dict):  # model-specific named tokens (image_token, ...)
            named.update({k: t for k, v in group.items() if (t := _token_text(v)) is not None})
        elif isinstance(group, list):
            extra += [t for v in group if (t := _token_text(v)) is not None]
    return named, extra


def _add_missing_tokens(backend: Any, config: dict[str, Any], special: list[str]) -> None:
    """Add what transformers adds at load time: the config's `added_tokens_decoder` entries and the
    special tokens tokenizer.json does not know (new ids after the vocabulary, in this order)."""
    from tokenizers import AddedToken

    known = set(backend.get_vocab(with_added_tokens=True))
    entries = config.get("added_tokens_decoder")
    decoder = entries if isinstance(entries, dict) else {}
    for _, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("content"), str)
            and entry["content"] not in known
        ):
            options = {
                k: v for k, v in entry.items() if k in ("single_word", "lstrip", "rstrip", "normalized")
            }
            token = AddedToken(entry["content"], special=bool(entry.get("special", False)), **options)
            backend.add_tokens([token])
            known.add(entry["content"])
    for text in special:
        if text not in known:
            backend.add_tokens([AddedToken(text, special=True)])
            known.add(text)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    """The template `apply_chat_template` uses without tools: template files before the config's key;
    of several named templates, `default`."""
    templates: dict[str, str] = {}
    if (folder / TEMPLATE_FILE).is_file():
        templates["default"] = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / TEMPLATES_DIR).is_dir():
        for path in sorted((folder / TEMPLATES_DIR).glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    found: Any = templates or config.get("chat_template")
    if isinstance(found, list):
        found = {t["name"]: t["template"] for t in found if isinstance(t, dict) and "name" in t}
    if isinstance(found, dict):
        if "default" not in found:
            names = ", ".join(sorted(found))
            raise ValueError(f"tokenizer {folder}: several chat templates ({names}) and none named 'default'")
        found = found["default"]
    return found if isinstance(found, str) else None


def _template_message(message: dict[str, Any]) -> dict[str, Any]:
    # transformers drops the keys whose value is None before rendering (a null `content` would render
    # as "None" in many templates)
    return {key: value for key, value in message.items() if value is not None}


@lru_cache(maxsize=8)
def _compiled_template(source: str) -> Any:
    """The template compiled as transformers compiles a chat template (utils/chat_template_utils.py):
    an immutable sandbox, trim_blocks and lstrip_blocks, loop controls, `{% generation %}` blocks,
    the `tojson` filter without HTML escaping, and the globals `raise_exception`, `strftime_now`,
    `dict` and `namespace` (both restricted as there)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_generation_extension(), jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals.update(_template_globals())
    return environment.from_string(source)


def _tojson(value: Any, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    # jinja's own tojson escapes HTML characters; transformers' does not
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _generation_extension() -> type:
    """`{% generation %}...{% endgeneration %}` renders its body (transformers tracks its span for
    assistant masks; a prompt needs only the text)."""
    import jinja2.ext
    import jinja2.nodes

    class Generation(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    return Generation


def _template_globals() -> dict[str, Any]:
    """transformers' template globals: `dict` and `namespace` restricted so that a template cannot
    reach Python internals through them."""
    import jinja2.exceptions
    import jinja2.utils

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    class TemplateDict:
        def __call__(self, *args: Any, **kwargs: Any) -> dict:
            return dict(*args, **kwargs)

        def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name: str, value: Any) -> None:
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name: Any) -> None:
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace: {name!r}"
                )

    return {
        "raise_exception": raise_exception,
        "strftime_now": lambda fmt: datetime.now().strftime(fmt),
        "dict": TemplateDict(),
        "namespace": TemplateNamespace,
    }


# --- pairs ---------------------------------------------------------------------------------------------


@dataclass
class Tokenised:
    """Token arrays for a batch of pairs (list<int32>), `too_long` mask and the common prefix length."""

    prompt_ids: pa.ListArray
    chosen_ids: pa.ListArray
    rejected_ids: pa.ListArray
    common_prefix_len: np.ndarray
    too_long: np.ndarray
    total_tokens: np.ndarray  # prompt + longer response, for the rejection detail


@dataclass
class PendingTokens:
    """A batch whose distinct texts are being encoded (`PairTokenizer.start`): per column, the
    futures of its distinct texts' ids (a chunk each) and each row's index into them."""

    rows: int
    futures: dict[str, list[Future]]
    indices: dict[str, np.ndarray]


class PairTokenizer:
    """A local tokenizer plus the length limits; `encode(frame)` tokenises a batch of pairs,
    `start(frame)` / `finish(pending)` the same in two steps, the encoding on background threads."""

    def __init__(self, path: str | os.PathLike[str], max_length: int, max_prompt_length: int):
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"tokenizer folder {self.path} not found")
        self.tokenizer = FastTokenizer(self.path)
        self.eos_token_id = self.tokenizer.token_id("eos_token")
        if self.eos_token_id is None:
            raise ValueError(f"tokenizer {self.path} has no eos_token: responses need an end token")
        self.max_length, self.max_prompt_length = max_length, max_prompt_length
        self.chat_template = self.tokenizer.chat_template
        # Two encoder threads, fed chunk by chunk in order: while one copies a chunk's ids out (holding
        # the GIL), the other's chunk keeps the Rust encoder (every core) busy.
        self._encoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dpop-tokenize")

    def info(self) -> dict[str, Any]:
        """What the manifest records about the tokenizer (hashes make the dataset id change with it)."""
        template = self.chat_template if self.chat_template is not None else f"plain:{PLAIN_TEMPLATE}"
        return {
            "path": str(self.path.resolve()),
            "sha256": tokenizer_sha256(self.path),
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "chat_template": "tokenizer" if self.chat_template is not None else "plain",
            "pad_token_id": self.tokenizer.token_id("pad_token"),
            "eos_token_id": self.eos_token_id,
        }

    def prompt_texts(self, prompts: pl.Series) -> list[str]:
        if self.chat_template is not None:
            return self.tokenizer.render(prompts.to_list())
        turn = (
            pl.element().struct.field("role").str.to_titlecase() + ": " + pl.element().struct.field("content")
        )
        bos = self.tokenizer.special_tokens.get("bos_token") or ""
        text = (
            pl.lit(bos)
            + prompts.to_frame("p").select(pl.col("p").list.eval(turn).list.join("\n\n")).to_series()
        )
        return (pl.select(text).to_series() + "\n\nAssistant: ").to_list()

    def encode(self, frame: pl.DataFrame) -> Tokenised:
        return self.finish(self.start(frame))

    def start(self, frame: pl.DataFrame) -> PendingTokens:
        """Render the prompts and queue the batch's distinct texts on the encoder threads; returns at
        once. Each distinct text of the batch is encoded once (real data repeats prompts and chosen
        answers across pairs)."""
        columns = {
            "prompt": self._prompt_texts_once(frame),
            "chosen": frame["chosen"].to_arrow(),
            "rejected": frame["rejected"].to_arrow(),
        }
        futures, indices = {}, {}
        for name, texts in columns.items():
            encoded = pc.dictionary_encode(_as_array(texts))
            indices[name] = encoded.indices.to_numpy(zero_copy_only=False)
            unique = encoded.dictionary.to_pylist()
            futures[name] = [
                self._encoder.submit(self.tokenizer.encode_chunk, unique[first : first + _TOKENIZE_CHUNK])
                for first in range(0, len(unique), _TOKENIZE_CHUNK)
            ]
        return PendingTokens(frame.height, futures, indices)

    def finish(self, pending: PendingTokens) -> Tokenised:
        """Wait for a started batch; truncate prompts, append EOS, measure lengths and common prefixes."""
        ids = {}
        for name, chunks in pending.futures.items():
            parts = [chunk.result() for chunk in chunks]
            distinct = _joined(parts, sum(len(lengths) for _, lengths in parts))
            ids[name] = _take(*distinct, pending.indices[name])
        prompt_values, prompt_offsets = _keep_end(*ids["prompt"], self.max_prompt_length)
        chosen_values, chosen_offsets = _append(*ids["chosen"], self.eos_token_id)
        rejected_values, rejected_offsets = _append(*ids["rejected"], self.eos_token_id)
        prompt_len = np.diff(prompt_offsets)
        longest = np.maximum(np.diff(chosen_offsets), np.diff(rejected_offsets))
        total = prompt_len + longest
        return Tokenised(
            prompt_ids=_list_array(prompt_values, prompt_offsets),
            chosen_ids=_list_array(chosen_values, chosen_offsets),
            rejected_ids=_list_array(rejected_values, rejected_offsets),
            common_prefix_len=common_prefix_lengths(
                chosen_values, chosen_offsets, rejected_values, rejected_offsets
            ),
            too_long=total > self.max_length,
            total_tokens=total,
        )

    def _prompt_texts_once(self, frame: pl.DataFrame) -> pa.Array:
        """Prompt texts per row, rendering each distinct prompt once (by prompt key when present)."""
        if PROMPT_KEY not in frame.columns:
            return pa.array(self.prompt_texts(frame["prompt"]), pa.string())
        keys = pc.dictionary_encode(_as_array(frame[PROMPT_KEY].to_arrow().cast(pa.string())))
        first = pl.Series(keys.indices).arg_unique()  # first row of each distinct key, in key order
        texts = pa.array(self.prompt_texts(frame["prompt"].gather(first)), pa.string())
        return texts.take(keys.indices)


def _as_array(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def _take(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows `rows` of a flat list array (values, offsets), as a new flat list array."""
    if len(rows) == len(offsets) - 1 and (rows == np.arange(len(rows))).all():
        return values, offsets  # every text distinct (the usual case): nothing to gather
    lengths = np.diff(offsets)[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # source index of output position j in row i: offsets[rows_i] + (j - new_offsets_i)
    shift = np.repeat(offsets[:-1][rows] - new_offsets[:-1], lengths)
    return values[np.arange(new_offsets[-1]) + shift], new_offsets


def _list_array(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    if offsets[-1] >= 2**31:
        raise ValueError("a batch of over 2**31 tokens: tokenise smaller batches")
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(values.astype(np.int32, copy=False))
    )


def _keep_end(values: np.ndarray, offsets: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the last `limit` tokens of each row."""
    lengths = np.diff(offsets)
    if not (lengths > limit).any():
        return values, offsets
    keep = np.minimum(lengths, limit)
    new_offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(keep, out=new_offsets[1:])
    # source index of output position j in row i: (end_i - keep_i) + (j - new_offsets_i)
    shift = np.repeat(offsets[1:] - keep - new_offsets[:-1], keep)
    return values[np.arange(new_offsets[-1]) + shift], new_offsets


def _append(values: np.ndarray, offsets: np.ndarray, token: int) -> tuple[np.ndarray, np.ndarray]:
    """Append `token` to every row."""
    rows = len(offsets) - 1
    out = np.insert(values, offsets[1:], np.int32(token))  # before each row's end: after its last token
    return out.astype(np.int32, copy=False), offsets + np.arange(rows + 1)


def common_prefix_lengths(
    a_values: np.ndarray, a_offsets: np.ndarray, b_values: np.ndarray, b_offsets: np.ndarray
) -> np.ndarray:
    """Per row, the number of leading tokens rows of `a` and `b` share (the first edit's index).

    Compares a block of positions per row at a time, only for rows without a difference yet, the
    block doubling each round: the work is about the shared prefixes, not the whole texts (most
    answers part within a few tokens)."""
    shortest = np.minimum(np.diff(a_offsets), np.diff(b_offsets))
    prefix = np.zeros(len(shortest), dtype=np.int64)
    rows = np.flatnonzero(shortest > 0)
    width = 8
    while len(rows):
        position = prefix[rows, None] + np.arange(width)
        inside = position < shortest[rows, None]
        a_index = np.where(inside, a_offsets[:-1][rows, None] + position, 0)
        b_index = np.where(inside, b_offsets[:-1][rows, None] + position, 0)
        stop = ~inside | (a_values[a_index] != b_values[b_index])
        found = stop.any(axis=1)
        prefix[rows[found]] += stop[found].argmax(axis=1)  # first difference (or the end) in the block
        prefix[rows[~found]] += width
        rows, width = rows[~found], width * 2
    return prefix.astype(np.int32)
