"""Load, validate and normalize SFT datasets into records: whole conversations with stable ids.

A record is {id, prompt, response, source} for a plain user -> assistant pair, and
{id, messages, prompt, response, source} for any other conversation (a system prompt, several turns):
``messages`` = [{role, content}] with roles system (first only), user, assistant; prompt and response are its
last user and assistant turns. Read from OpenAI ``messages``, ShareGPT ``conversations`` (+ ``system``),
LLaMA-Factory alpaca rows (``system``, ``history``) and the prompt/response layouts of FIELD_PAIRS.
``record_messages`` gives the conversation of any record.

A record's id is a hash of its normalized content, so the same example gets the same id in every
manifest, on every machine, whatever file or order it came from (NeMo Curator users lose their
ids to file-and-block-derived ones; we do not).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from infosift.atomic import atomic_output
from infosift.errors import DataError

SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass(frozen=True)
class DatasetSpec:
    """Where a named dataset lives and which fields hold the prompt and the response.

    Fields left None are recognised per row (see FIELD_PAIRS and chat `messages`), so a new dataset in
    a common SFT layout needs only its name and files, not code.
    """

    name: str
    prompt_field: str | None = None
    response_field: str | None = None
    hub_id: str | None = None
    hub_config: str | None = None


DATASETS: dict[str, DatasetSpec] = {
    "gsm8k": DatasetSpec("gsm8k", "question", "answer", hub_id="openai/gsm8k", hub_config="main"),
}

# (prompt, response) field names of common SFT layouts, tried in order when a spec names none.
# Alpaca-style rows also carry an optional `input` that is appended to the instruction.
FIELD_PAIRS = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("instruction", "output"),
    ("instruction", "response"),
    ("query", "response"),
    ("input", "output"),
    ("problem", "solution"),
)
CHAT_FIELDS = ("messages", "conversations")


def dataset_spec(name: str, prompt_field: str | None = None, response_field: str | None = None) -> DatasetSpec:
    """A registered dataset, or a generic one; explicit field names override both."""
    spec = DATASETS.get(name, DatasetSpec(name, hub_id=name if "/" in name else None))  # owner/name: a hub id
    if prompt_field or response_field:
        spec = DatasetSpec(name, prompt_field or spec.prompt_field, response_field or spec.response_field,
                           spec.hub_id, spec.hub_config)
    return spec


# -- reading -------------------------------------------------------------------------------
def parse_json(raw: bytes, path: str | Path) -> object:
    """One JSON document from bytes; non-UTF-8, malformed or too-deep input is one DataError naming ``path``.

    The one decoder of whole-file JSON (datasets, manifests, metrics), so every file says the same words.
    """
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None


MAX_LINE_BYTES = 64 * 2**20  # one JSONL row (a conversation); a longer line is an error, not a memory spike
MAX_JSON_BYTES = 1 * 2**30  # a .json list is parsed whole: past this, JSONL or Parquet (both streamed)
PARQUET_BATCH = 1024  # rows per Parquet record batch read


def read_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, row) from a .jsonl, .json (list of objects) or .parquet file.

    JSONL is read a line at a time, each at most MAX_LINE_BYTES, and Parquet a record batch at a time, so memory
    is bounded by one row (or batch), not by the file; a .json list, which must be parsed whole, is refused past
    MAX_JSON_BYTES.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty")
    if path.suffix == ".parquet":
        yield from _parquet_rows(path)
        return
    if path.suffix == ".json":
        if size > MAX_JSON_BYTES:
            raise DataError(f"{path}: a .json list of {size / 2**30:.1f} GiB is read whole; write it as JSONL")
        rows = parse_json(path.read_bytes(), path)
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json dataset must be a list of objects")
        for i, row in enumerate(rows, start=1):
            yield i, _as_object(row, path, i)
        return
    n = 0
    for lineno, line in _jsonl_lines(path):
        if n == 0 and line.lstrip()[:1] == b"[":
            raise DataError(
                f"{path}:1: this is a JSON array, but JSONL expects one JSON object per line "
                "(rename it to .json, or write one object per line)"
            )
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{lineno}: not UTF-8 (byte {e.start} of the line)") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise DataError(f"{path}:{lineno}: JSON nested too deeply to read") from None
        n += 1
        yield lineno, _as_object(row, path, lineno)
    if n == 0:
        raise DataError(f"{path}: no records (only blank lines)")


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each non-blank line, read one line at a time with a cap (MAX_LINE_BYTES)."""
    with path.open("rb") as f:
        for lineno in itertools.count(1):
            line = f.readline(MAX_LINE_BYTES + 1)
            if not line:
                return
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                raise DataError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB (the per-row limit)")
            if line.strip():
                yield lineno, line


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows of a Parquet file, a record batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH)
        i = 0
        for batch in batches:
            for row in batch.to_pylist():
                i += 1
                yield i, _as_object(row, path, i)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(e).split())[:200]})") from None


def _as_object(row: object, path: Path, lineno: int) -> dict:
    if not isinstance(row, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
    return row


# -- normalizing ---------------------------------------------------------------------------
def normalize_text(text: str) -> str:
    """NFC, unix newlines, no trailing whitespace on lines or ends: what the id is computed over."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def record_id(prompt: str, response: str) -> str:
    """Stable id: the first 16 hex digits of sha256 over the normalized prompt and response."""
    digest = hashlib.sha256(f"{prompt}\x1f{response}".encode()).hexdigest()
    return digest[:16]


def conversation_id(messages: list[dict]) -> str:
    """Stable id of a normalized conversation (16 hex digits).

    A plain user -> assistant pair keeps ``record_id`` of its two texts, so a prompt/response record has the id
    it always had (manifests written before conversations existed stay valid); any other conversation hashes
    every turn, role and content, in order.
    """
    if [m["role"] for m in messages] == ["user", "assistant"]:
        return record_id(messages[0]["content"], messages[1]["content"])
    text = "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in messages)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# role names of the chat layouts read here (OpenAI `role`, ShareGPT `from`) -> infosift's three roles
ROLE_NAMES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}
_A = {"user": "a user", "assistant": "an assistant"}
ORDER_RULE = "roles must go [system,] user, assistant, user, assistant, ... and end with an assistant turn"


class Turn(NamedTuple):
    """One raw turn before checking: where it came from (for errors), its role and its raw content."""

    label: str
    role: str
    content: object


def _chat_turns(turns: object, field: str, where: str) -> list[Turn]:
    """The turns of an OpenAI ``messages`` ({role, content}) or ShareGPT ``conversations`` ({from, value}) list."""
    if not isinstance(turns, list):
        raise DataError(f"{where}: field {field!r}: a chat field must be a list of turns")
    out = []
    for n, t in enumerate(turns, start=1):
        label = f"field {field!r} turn {n}"
        if not isinstance(t, dict):
            raise DataError(f"{where}: {label} must be an object with role and content, got {type(t).__name__}")
        name = t.get("role", t.get("from"))
        if not isinstance(name, str) or name not in ROLE_NAMES:
            known = ", ".join(ROLE_NAMES)
            raise DataError(f"{where}: {label} has role {name!r}; known roles: {known}")
        out.append(Turn(label, ROLE_NAMES[name], t.get("content", t.get("value"))))
    return out


def _history_turns(history: object, where: str) -> list[Turn]:
    """LLaMA-Factory's ``history`` column: [[user, assistant], ...], the turns before the row's own pair."""
    if history is None:
        return []
    if not isinstance(history, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in history):
        raise DataError(f"{where}: field 'history' must be a list of [user, assistant] pairs")
    return [
        Turn(f"field 'history' pair {n} {role}", role, text)
        for n, pair in enumerate(history, start=1)
        for role, text in zip(("user", "assistant"), pair, strict=True)
    ]


def row_fields(row: dict, spec: DatasetSpec, where: str) -> tuple[tuple[str, object], tuple[str, object]]:
    """((field, prompt), (field, response)) of a prompt/response row: the spec's fields, else the first known layout."""
    known = [p for p in FIELD_PAIRS if p[0] in row and p[1] in row] or [p for p in FIELD_PAIRS if p[0] in row]
    p_field, r_field = known[0] if known else FIELD_PAIRS[0]
    p_field, r_field = spec.prompt_field or p_field, spec.response_field or r_field
    for field in (p_field, r_field):
        if field not in row:
            hint = "" if spec.prompt_field else " (set download.fields: {prompt: ..., response: ...})"
            raise DataError(f"{where}: missing field {field!r} (has: {', '.join(sorted(row)) or 'none'}){hint}")
    prompt = row[p_field]
    extra = row.get("input") if p_field == "instruction" else None
    if isinstance(prompt, str) and isinstance(extra, str) and extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return (p_field, prompt), (r_field, row[r_field])


def row_turns(row: dict, spec: DatasetSpec, where: str) -> list[Turn]:
    """The raw turns of a row in any known layout, unchecked (see check_turns).

    A ``system`` field (ShareGPT, LLaMA-Factory; blank means none) becomes the first turn; LLaMA-Factory's
    ``history`` pairs come before the row's own instruction/output pair.
    """
    value = row.get("system")
    blank = value is None or (isinstance(value, str) and not value.strip())
    system = [] if blank else [Turn("field 'system'", "system", value)]
    if not (spec.prompt_field or spec.response_field):
        for chat in CHAT_FIELDS:
            if chat in row:
                turns = _chat_turns(row[chat], chat, where)
                if system and turns and turns[0].role == "system":
                    raise DataError(f"{where}: both a 'system' field and a system turn in field {chat!r}")
                return system + turns
    (p_field, prompt), (r_field, response) = row_fields(row, spec, where)
    pair = [Turn(f"field {p_field!r}", "user", prompt), Turn(f"field {r_field!r}", "assistant", response)]
    return system + _history_turns(row.get("history"), where) + pair


def check_turns(turns: list[Turn], where: str) -> list[dict]:
    """The normalized conversation [{role, content}] of raw turns, or one DataError naming the turn at fault.

    Contents must be non-empty strings (normalize_text), except a blank system prompt, which is no system
    prompt (LLaMA-Factory writes "" on rows without one). Order: an optional system turn first, then user and
    assistant turns alternating, starting with a user turn and ending with an assistant turn.
    """
    messages, prev = [], None
    for n, (label, role, content) in enumerate(turns):
        if role == "system" and n == 0 and isinstance(content, str) and not content.strip():
            continue
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: {label} must be a non-empty string")
        if role == "system" and n > 0:
            raise DataError(f"{where}: {label} is a system turn after the first turn; {ORDER_RULE}")
        expected = "assistant" if prev == "user" else "user"
        if role != "system" and role != expected:
            after = f"after {_A[prev]} turn" if prev in _A else "with no user turn before it"
            raise DataError(f"{where}: {label} is {_A[role]} turn {after}; {ORDER_RULE}")
        messages.append({"role": role, "content": normalize_text(content)})
        prev = role
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: the conversation has no assistant turn")
    if prev != "assistant":
        raise DataError(f"{where}: {turns[-1].label} is a user turn at the end; {ORDER_RULE}")
    return messages


def make_record(messages: list[dict], source: str) -> dict:
    """The record of a checked conversation (check_turns).

    A plain user -> assistant pair is {id, prompt, response, source}, exactly as before conversations existed;
    any other conversation is {id, messages, prompt, response, source}, where prompt and response are its last
    user and last assistant turns (what code that reads one pair sees: GSM8K scoring, DSIR, contamination).
    """
    prompt = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    response = messages[-1]["content"]
    rid = conversation_id(messages)
    if [m["role"] for m in messages] == ["user", "assistant"]:
        return {"id": rid, "prompt": prompt, "response": response, "source": source}
    return {"id": rid, "messages": messages, "prompt": prompt, "response": response, "source": source}


def normalize_row(row: dict, spec: DatasetSpec, path: Path, lineno: int) -> dict:
    """Map a raw row to a record (make_record); a missing field, bad content or bad turn order is a DataError."""
    where = f"{path}:{lineno}"
    return make_record(check_turns(row_turns(row, spec, where), where), spec.name)


def record_messages(rec: dict) -> list[dict]:
    """The whole conversation of a record: its ``messages``, or [user, assistant] of a prompt/response record."""
    if "messages" in rec:
        return rec["messages"]
    return [{"role": "user", "content": rec["prompt"]}, {"role": "assistant", "content": rec["response"]}]


def replace_response(rec: dict, response: str) -> dict:
    """A copy of ``rec`` whose last assistant turn is ``response``, with the id of its new content."""
    messages = [*record_messages(rec)[:-1], {"role": "assistant", "content": response}]
    out = {**rec, "id": conversation_id(messages), "response": response}
    if "messages" in rec:
        out["messages"] = messages
    return out


def check_record_turns(rec: dict, where: str) -> None:
    """A stored record's ``messages`` (if any) are a valid conversation whose last turns are its prompt/response."""
    if "messages" not in rec:
        return
    messages = rec["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{where}: field 'messages' must be a list of {{role, content}} objects")
    turns = [Turn(f"field 'messages' turn {n}", m.get("role"), m.get("content")) for n, m in enumerate(messages, 1)]
    for t in turns:
        if t.role not in ("system", "user", "assistant"):
            raise DataError(f"{where}: {t.label} has role {t.role!r}; known roles: system, user, assistant")
    if check_turns(turns, where) != messages:
        raise DataError(f"{where}: field 'messages' is not normalized (blank system turn or untrimmed text)")
    if messages[-1]["content"] != rec["response"]:
        raise DataError(f"{where}: field 'response' is not the last assistant turn of 'messages'")
    if next(m["content"] for m in reversed(messages) if m["role"] == "user") != rec["prompt"]:
        raise DataError(f"{where}: field 'prompt' is not the last user turn of 'messages'")


def load_file(path: str | Path, spec: DatasetSpec) -> tuple[list[dict], int]:
    """Normalized records of one file with duplicates dropped (first occurrence kept), and the count dropped."""
    path = Path(path)
    seen: set[str] = set()
    records, n_rows = [], 0
    for lineno, row in read_rows(path):
        n_rows += 1
        rec = normalize_row(row, spec, path, lineno)
        if rec["id"] not in seen:
            seen.add(rec["id"])
            records.append(rec)
    return records, n_rows - len(records)


# -- finding a dataset ---------------------------------------------------------------------
def find_split(name: str, split: str, mirror_dir: str | Path | None) -> Path | None:
    """The mirror file for a split: <mirror_dir>/<name>/<split>.{jsonl,json,parquet}, or None."""
    if mirror_dir is None:
        return None
    return split_file(Path(mirror_dir) / name, split)


def split_file(folder: Path, split: str) -> Path | None:
    """<folder>/<split>.{jsonl,json,parquet}, the first that is a file, or None."""
    for suffix in SUFFIXES:
        candidate = folder / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def hub_offline() -> bool:
    """Whether the Hugging Face clients are told to stay offline (the stages' default; HF_HUB_OFFLINE=0 opts in)."""
    return any(
        os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def fetch_from_hub(
    spec: DatasetSpec, split: str, cache_dir: str | Path, looked: str = "the local mirror", download: bool = True
) -> Path:
    """Download a split with `datasets` and write it as JSONL; offline this fails with one clear line.

    ``looked``: where the mirror file was looked for, named in the error. ``download=False`` only answers whether
    the split can be had: the cached file, or where it would be cached, or the DataError a download would end in.
    """
    if spec.hub_id is None:
        raise DataError(f"dataset {spec.name!r} split {split!r}: not in {looked} and no hub id to fall back on")
    out = Path(cache_dir) / spec.name / f"{split}.jsonl"
    if out.exists():
        return out
    if not download:
        if hub_offline():
            raise DataError(
                f"dataset {spec.name!r} split {split!r}: not in {looked}, not cached in {out}, and the hub "
                f"({spec.hub_id}) is off here (HF_HUB_OFFLINE=1; set HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to use it)"
            )
        return out
    try:
        import datasets

        ds = datasets.load_dataset(spec.hub_id, spec.hub_config, split=split)
    except Exception as e:  # the hub client raises many types; all mean "not available here"
        raise DataError(
            f"dataset {spec.name!r} split {split!r}: not in {looked} and the hub "
            f"({spec.hub_id}) is unreachable: {type(e).__name__}"
        ) from None
    with atomic_output(out) as tmp, tmp.open("w") as f:
        for row in ds:
            f.write(json.dumps(row) + "\n")
    return out


def locate(name: str, split: str, mirror_dir: str | Path | None, hub_cache: str | Path, download: bool = True) -> Path:
    """Sources in order: the local mirror directory, then the hub id (cached as JSONL; see fetch_from_hub)."""
    looked = "the local mirror (no mirror_dir)"
    if mirror_dir is not None:
        looked = f"the local mirror ({Path(mirror_dir) / name / split}{{{','.join(SUFFIXES)}}})"
    return find_split(name, split, mirror_dir) or fetch_from_hub(dataset_spec(name), split, hub_cache, looked, download)


class DataSource(NamedTuple):
    """Where download reads a dataset from: its short name and the file of each split it reads."""

    name: str
    splits: dict[str, Path]


def is_dataset_path(dataset: str) -> bool:
    """Whether ``download.dataset`` names a file or folder rather than a mirror name or a hub id.

    A data suffix, a leading /, ./, ../ or ~, or something that exists here: so `gsm8k` and `openai/gsm8k`
    stay names, and `mine.jsonl`, `./mine` or `/data/mine` are paths.
    """
    return dataset.endswith(SUFFIXES) or dataset.startswith(("/", "./", "../", "~")) or Path(dataset).exists()


def dataset_name(dataset: str) -> str:
    """The short name records, manifests and registered models carry: a file's stem, else the last part."""
    path = Path(dataset.rstrip("/")).expanduser()
    name = path.stem if path.suffix in SUFFIXES else path.name
    return name or path.resolve().name


def locate_dataset(
    dataset: str,
    train_split: str,
    test_split: str | None,
    mirror_dir: str | Path | None,
    hub_cache: str | Path,
    download: bool = True,
) -> DataSource:
    """The files of the train split and (unless ``test_split`` is None) the test split of ``dataset``.

    A path is read where it is: one file is the train split alone; a folder holds <split>.{jsonl,json,parquet}.
    A name or hub id is looked up in the mirror, then fetched from the hub into ``hub_cache`` (see locate;
    ``download=False`` checks that it could be, and downloads nothing).
    """
    splits = [train_split] + ([test_split] if test_split is not None else [])
    if not is_dataset_path(dataset):
        return DataSource(
            dataset_name(dataset), {s: locate(dataset, s, mirror_dir, hub_cache, download) for s in splits}
        )
    path = Path(dataset).expanduser()
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise DataError(f"{path}: a dataset file must end in {', '.join(SUFFIXES)}")
        if test_split is not None:
            raise DataError(
                f"{path}: one file holds only a train split; hold out a test split from it "
                "(download.test_split: null and download.test_size: N)"
            )
        return DataSource(dataset_name(dataset), {train_split: path})
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    found = {}
    for split in splits:
        if (f := split_file(path, split)) is None:
            has = ", ".join(sorted(p.name for p in path.iterdir() if p.suffix in SUFFIXES)) or "no data files"
            hint = "; without a test split set download.test_split: null and download.test_size: N" * (
                split == test_split
            )
            raise DataError(f"{path}: no {split}.jsonl, {split}.json or {split}.parquet (has: {has}){hint}")
        found[split] = f
    return DataSource(dataset_name(dataset), found)


def subsample(records: list[dict], size: int | None, seed: int) -> list[dict]:
    """A seeded subset of `size` records, kept in their original order; None or >= len keeps all."""
    if size is None or size >= len(records):
        return list(records)
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=size, replace=False))
    return [records[int(i)] for i in idx]


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def read_records(path: str | Path) -> list[dict]:
    """Every row of a .jsonl, .json or .parquet file, in order: the one whole-file reader (see read_rows)."""
    return [row for _, row in read_rows(path)]


def read_examples(path: str | Path, allow_empty: bool = False) -> list[dict]:
    """Normalized records {id, [messages,] prompt, response, ...} (as download writes them), each checked.

    Every stage that feeds records to a model reads them here, so a hand-edited or foreign file (raw
    question/answer rows, a missing id, a number as response) fails before the model loads, naming the
    file and line, instead of as a KeyError halfway through a progress bar. ``allow_empty``: an empty file
    is no records (the target slice when download.target_size is 0).
    """
    path = Path(path)
    if allow_empty and path.is_file() and path.stat().st_size == 0:
        return []
    records, seen = [], {}
    for lineno, row in read_rows(path):
        for key in ("id", "prompt", "response"):
            if key not in row:
                has = ", ".join(sorted(row)) or "none"
                raise DataError(
                    f"{path}:{lineno}: missing field {key!r} (has: {has}); expected a normalized record "
                    "{id, prompt, response} as the download stage writes"
                )
            if not isinstance(row[key], str) or not row[key].strip():
                raise DataError(f"{path}:{lineno}: field {key!r} must be a non-empty string, got {row[key]!r}")
        check_record_turns(row, f"{path}:{lineno}")
        if row["id"] in seen:
            raise DataError(f"{path}:{lineno}: id {row['id']!r} repeats line {seen[row['id']]}")
        seen[row["id"]] = lineno
        records.append(row)
    return records


class MTBenchFiles(NamedTuple):
    """MT-Bench as mirrored from FastChat: questions, GPT-4 reference answers, the judge prompt templates."""

    questions: Path
    references: Path
    judge_prompts: Path


def mt_bench_files(mirror_dir: str | Path) -> MTBenchFiles:
    """The three MT-Bench files under ``<mirror_dir>/mt_bench``: the one place that knows the layout.

    A missing file is a DataError that names it and the layout expected.
    """
    return mt_bench_folder_files(Path(mirror_dir) / "mt_bench")


MT_BENCH_UNAVAILABLE = "unavailable.txt"  # written by a fetch in place of the files: why they are not there
MT_BENCH_NAMES = MTBenchFiles("question.jsonl", "reference_answer_gpt-4.jsonl", "judge_prompts.jsonl")
# the hub's copy: FastChat's llm_judge data as the lmsys/mt-bench Space serves it (same content, other paths)
MT_BENCH_HUB = (
    "lmsys/mt-bench",
    MTBenchFiles(
        "data/mt_bench/question.jsonl", "data/mt_bench/reference_answer/gpt-4.jsonl", "data/judge_prompts.jsonl"
    ),
)


def mt_bench_folder_files(root: str | Path) -> MTBenchFiles:
    """The three MT-Bench files in the folder ``root`` (question.jsonl, reference_answer_gpt-4.jsonl,
    judge_prompts.jsonl); a missing one is a DataError naming it and the layout expected, or the reason a
    fetch recorded in <root>/unavailable.txt for not bringing them."""
    root = Path(root)
    if (reason := root / MT_BENCH_UNAVAILABLE).is_file():
        raise DataError(f"MT-Bench is not in {root}: {' '.join(reason.read_text().split())}")
    files = MTBenchFiles(*(root / name for name in MT_BENCH_NAMES))
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: not found; MT-Bench needs {', '.join(MT_BENCH_NAMES)} in {root}")
    return files


def locate_mt_bench(folder: str | Path, hub_cache: str | Path, download: bool = True) -> MTBenchFiles:
    """MT-Bench's files: in ``folder`` when all three are there, else the hub's copy cached in <hub_cache>/mt_bench.

    Like a dataset (locate): the mirror first, then the hub; offline with neither, one DataError naming the
    folder. ``download=False`` downloads nothing: the files found, or where the hub's would be cached, or the
    DataError a download would end in.
    """
    try:
        return mt_bench_folder_files(folder)
    except DataError as e:
        missing = e
    cached = Path(hub_cache) / "mt_bench"
    if all((cached / name).is_file() for name in MT_BENCH_NAMES):
        return mt_bench_folder_files(cached)
    repo, remote = MT_BENCH_HUB
    if not download:
        if hub_offline():
            raise DataError(f"{missing}; not cached in {cached}, and the hub ({repo}) is off here (HF_HUB_OFFLINE=1)")
        return MTBenchFiles(*(cached / name for name in MT_BENCH_NAMES))
    try:
        from huggingface_hub import hf_hub_download

        for name, path in zip(MT_BENCH_NAMES, remote, strict=True):
            with atomic_output(cached / name) as tmp:
                shutil.copyfile(hf_hub_download(repo, path, repo_type="space"), tmp)
    except Exception as e:  # the hub client raises many types; all mean "not available here"
        raise DataError(f"{missing}; and the hub ({repo}) is unreachable: {type(e).__name__}") from None
    return mt_bench_folder_files(cached)


class MTBench(NamedTuple):
    """MT-Bench as the judged suite and FisherSketch read it, checked (see read_mt_bench)."""

    questions: list[dict]  # {question_id, category, turns (non-empty list of strings), ...} in file order
    references: dict  # question_id -> the GPT-4 reference answer to the first turn
    templates: dict[str, str]  # judge prompt name -> template (only the single-answer ones infosift uses)


# the judge prompts infosift fills, and the fields each may use (FastChat's judge_prompts.jsonl has more)
JUDGE_TEMPLATE_FIELDS = {"single-v1": {"question", "answer"}, "single-math-v1": {"question", "answer", "ref_answer_1"}}


def read_mt_bench(files: MTBenchFiles, templates: bool = True) -> MTBench:
    """Questions, first-turn references and judge templates of MT-Bench, each row checked (file:line in errors).

    ``templates=False`` skips the judge prompts (a corpus of question/reference pairs needs none).
    """
    questions, by_id = [], {}
    for lineno, q in read_rows(files.questions):
        where = f"{files.questions}:{lineno}"
        _require(q, ("question_id", "category", "turns"), where)
        turns = q["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns) or not turns[0]:
            raise DataError(f"{where}: field 'turns' must be a non-empty list of strings, got {turns!r}")
        if not isinstance(q["category"], str):
            raise DataError(f"{where}: field 'category' must be a string, got {q['category']!r}")
        if q["question_id"] in by_id:
            raise DataError(f"{where}: question_id {q['question_id']!r} repeats")
        by_id[q["question_id"]] = q
        questions.append(q)
    references = {}
    for lineno, ref in read_rows(files.references):
        where = f"{files.references}:{lineno}"
        _require(ref, ("question_id", "choices"), where)
        if ref["question_id"] not in by_id:
            raise DataError(f"{where}: question_id {ref['question_id']!r} is not in {files.questions.name}")
        choices = ref["choices"]
        first = choices[0] if isinstance(choices, list) and choices else None
        turns = first.get("turns") if isinstance(first, dict) else None
        if not isinstance(turns, list) or not turns or not isinstance(turns[0], str):
            raise DataError(f"{where}: expected choices[0].turns[0] to be the reference answer (a string)")
        references[ref["question_id"]] = turns[0]
    return MTBench(questions, references, _judge_templates(files.judge_prompts) if templates else {})


def _require(row: dict, keys: tuple[str, ...], where: str) -> None:
    for key in keys:
        if key not in row:
            raise DataError(f"{where}: missing field {key!r} (has: {', '.join(sorted(row)) or 'none'})")


def _judge_templates(path: Path) -> dict[str, str]:
    """The single-answer judge templates, each a string whose {fields} the judge can fill."""
    import string

    found = {}
    for lineno, row in read_rows(path):
        if row.get("name") in JUDGE_TEMPLATE_FIELDS:
            name, template = row["name"], row.get("prompt_template")
            if not isinstance(template, str):
                raise DataError(f"{path}:{lineno}: field 'prompt_template' must be a string")
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            except ValueError as e:
                raise DataError(f"{path}:{lineno}: prompt_template of {name!r} is not a format string ({e})") from None
            unknown = sorted(fields - JUDGE_TEMPLATE_FIELDS[name])
            if unknown:
                known = ", ".join(sorted(JUDGE_TEMPLATE_FIELDS[name]))
                raise DataError(f"{path}:{lineno}: prompt_template of {name!r} uses {{{unknown[0]}}}; known: {known}")
            found[name] = template
    missing = sorted(set(JUDGE_TEMPLATE_FIELDS) - set(found))
    if missing:
        raise DataError(f"{path}: no judge prompt named {missing[0]!r}")
    return found


def load_mt_bench(folder: str | Path) -> list[dict]:
    """MT-Bench first turns that have a GPT-4 reference answer, as records (a small second domain).

    Used where a corpus of (prompt, response) pairs from outside GSM8K is wanted, e.g. as a
    candidate source pool for FisherSketch; ``folder`` holds the three files (mt_bench_folder_files).
    """
    files = mt_bench_folder_files(folder)
    bench = read_mt_bench(files, templates=False)
    spec = DatasetSpec("mt_bench")
    by_id = {q["question_id"]: q for q in bench.questions}
    return [
        normalize_row({"prompt": by_id[qid]["turns"][0], "response": ref}, spec, files.references, n)
        for n, (qid, ref) in enumerate(bench.references.items(), start=1)
    ]
