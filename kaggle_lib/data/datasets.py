"""Item schema, jsonl files, the shipped data, and loaders for HF / Kaggle datasets.

All loaders return items in the project schema (``docs/DESIGN.md``)::

    {"id", "section", "category", "difficulty", "prompt", "answer"}  (+ "reasoning" for SFT)

A *data spec* string names where items come from (``load_items``):

- ``builtin:train`` / ``builtin:eval``: the files shipped in ``kaggle_lib/data/files/``.
- ``jsonl:<path>``: a jsonl file in the project schema.
- ``hf:<repo>[:<config>][@<split>]``: a HuggingFace dataset via ``datasets.load_dataset``
  (a hub id such as ``openai/gsm8k`` or a local directory laid out like a hub repo);
  split defaults to ``train`` and may use HF slicing (``test[:100]``).
- ``kaggle:<owner>/<dataset>/versions/<N>/<file>``: one csv/jsonl/json/parquet file of a
  Kaggle dataset via ``kagglehub.dataset_download``. The version is required: runs must be
  reproducible, and kagglehub resolves an unversioned handle by asking the Kaggle API even
  when the files are cached.

A config's ``data.train`` / ``data.eval`` may also be a list of specs: their items concatenated
in order (``load_sources``).

External records are mapped by their columns (``map_record``): GSM8K (``question`` + ``answer``
ending in ``#### N``), MATH-style (``problem`` + ``solution`` with ``\\boxed{}``, optional
``answer``), or records already in the project schema.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from kaggle_lib.errors import KaggleLibError

REQUIRED_FIELDS: tuple[str, ...] = ("id", "section", "category", "difficulty", "prompt", "answer")
# "unrated" is for external data that carries no difficulty (GSM8K).
Difficulty = Literal["easy", "medium", "hard", "unrated"]
DIFFICULTIES: tuple[str, ...] = get_args(Difficulty)
BUILTIN_SPLITS: tuple[str, ...] = ("train", "eval", "eval_rg")  # eval_rg: reasoning-gym
FILES_DIR = Path(__file__).resolve().parent / "files"
SPEC_FORMS = (
    "builtin:train | builtin:eval | builtin:eval_rg | jsonl:<path> | "
    "hf:<repo>[:<config>][@<split>] | kaggle:<owner>/<dataset>/versions/<N>/<file> | "
    "rg:<mix>[@<seed>][/op|/place_value]"
)
_LABEL = re.compile(r"[a-z][a-z0-9_]*")
# Generated sources register their spec kind here: kind -> (check the body and return it,
# load(body, limit)). "rg" comes from kaggle_lib.data.reasoning_gym (imported by the package),
# so this module need not import it (no import cycle).
GENERATED_KINDS: dict[str, tuple[Callable[[str], str],
                                 Callable[[str, int | None], list[dict[str, Any]]]]] = {}
_KAGGLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


class DataError(KaggleLibError, ValueError):
    """Bad data or data spec; the message names the file or spec, the field and what is allowed."""


# ------------------------------------------------------------------------------------- schema


class _Blank(ValueError):
    """A required text field holds only whitespace."""


class _NotALabel(ValueError):
    """A section/category is not a lower-case label."""


def _not_blank(text: str) -> str:
    if not text.strip():
        raise _Blank("is empty")
    return text


def _label(text: str) -> str:
    if not _LABEL.fullmatch(text):
        raise _NotALabel(
            "use a lower-case label matching [a-z][a-z0-9_]* (e.g. 'math', 'date_time')")
    return text


Text = Annotated[str, AfterValidator(_not_blank)]
Label = Annotated[str, AfterValidator(_not_blank), AfterValidator(_label)]


class Item(BaseModel):
    """One item of the project schema. Extra fields are allowed and kept.

    ``section``/``category`` are lower-case labels because scorecards group by them;
    ``difficulty`` is one of :data:`DIFFICULTIES`. Strict: numbers are not strings.
    """

    model_config = ConfigDict(extra="allow", strict=True)

    id: Text
    section: Label
    category: Label
    difficulty: Difficulty
    prompt: Text
    answer: Text
    # Absent is fine (eval items); present must be a non-empty string, so no `| None`.
    reasoning: Text = None  # type: ignore[assignment]


def normalize_text(text: str) -> str:
    """Casefold, keep letters and digits, single spaces: the key for duplicate checks."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", str(text).casefold()).split())


def _item_error(error: Any, item: Mapping[str, Any], fields: tuple[str, ...]) -> str:
    """One pydantic error as 'field <name> ...: what is allowed'."""
    name = str(error["loc"][0])
    value = item.get(name)
    kind = error["type"]
    problem = error.get("ctx", {}).get("error")
    if kind == "missing":
        return f"missing field {name!r}; required fields: {', '.join(fields)}"
    if isinstance(problem, _Blank):
        return f"field {name!r} is empty"
    if isinstance(problem, _NotALabel) or kind == "literal_error":
        allowed = problem if kind != "literal_error" else f"allowed: {', '.join(DIFFICULTIES)}"
        return f"field {name!r} = {value!r} is not allowed; {allowed}"
    hint = f' (write it as a string: "{value}")' if isinstance(value, int | float) else ""
    return f"field {name!r} must be a string, got {type(value).__name__} {value!r}{hint}"


def validate_item(
    item: Any, *, where: str, require_reasoning: bool = False
) -> dict[str, Any]:
    """Check one item against :class:`Item` and return it; ``where`` prefixes the error.

    The first problem is reported, missing fields first.
    """
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    fields = REQUIRED_FIELDS + (("reasoning",) if require_reasoning else ())
    try:
        Item.model_validate(dict(item))
        errors = []
    except ValidationError as exc:
        errors = exc.errors()
    if require_reasoning and "reasoning" not in item:
        errors.append({"loc": ("reasoning",), "type": "missing"})
    if errors:
        first = min(errors, key=lambda e: e["type"] != "missing")  # missing fields first
        raise DataError(f"{where}: {_item_error(first, item, fields)}")
    return dict(item)


def validate_items(
    items: Iterable[Any], *, source: str, require_reasoning: bool = False
) -> list[dict[str, Any]]:
    """Validate items from ``source`` and check that ids are unique."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{source}: item {i}"
        checked = validate_item(item, where=where, require_reasoning=require_reasoning)
        if checked["id"] in seen:
            first = seen[checked["id"]]
            raise DataError(f"{where}: duplicate id {checked['id']!r} (first at item {first})")
        seen[checked["id"]] = i
        out.append(checked)
    return out


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a line that is not UTF-8 is a DataError naming the
    file, the line and the byte."""
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line is "
                                f"{raw[e.start:e.start + 1]!r}); save the file as UTF-8") from None


def load_jsonl(
    path: str | os.PathLike[str], *, require_reasoning: bool = False, limit: int | None = None
) -> list[dict[str, Any]]:
    """Read and validate a jsonl file of items; errors name the file and line number.

    Blank lines are skipped. ``limit`` keeps the first ``limit`` items.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, line in _text_lines(path):
        if limit is not None and len(items) >= limit:
            break
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        item = validate_item(record, where=where, require_reasoning=require_reasoning)
        if item["id"] in seen:
            raise DataError(
                f"{where}: duplicate id {item['id']!r} (first on line {seen[item['id']]})"
            )
        seen[item["id"]] = lineno
        items.append(item)
    if not items and limit != 0:
        raise DataError(f"{path}: no items (the file is empty)")
    return items


def write_jsonl(path: str | os.PathLike[str], items: Iterable[Mapping[str, Any]]) -> Path:
    """Write items one JSON object per line (UTF-8, keys in insertion order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    return path


def load_builtin(split: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """The shipped synthetic data: ``"train"`` (with reasoning) or ``"eval"``."""
    if split not in BUILTIN_SPLITS:
        raise DataError(
            f"builtin split {split!r} is not allowed; allowed: {', '.join(BUILTIN_SPLITS)}"
        )
    return load_jsonl(FILES_DIR / f"{split}.jsonl", require_reasoning=split == "train", limit=limit)


# -------------------------------------------------------------------------- external records

_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations: "<<48/2=24>>"
_NUMBER = re.compile(r"-?\$?\d{1,3}(,\d{3})+(\.\d+)?|-?\$?\d+(\.\d+)?")


def _clean_number(text: str) -> str:
    """``"1,234"`` -> ``"1234"``, ``"$5"`` -> ``"5"``; other answers are only stripped."""
    text = text.strip().rstrip(".")
    if _NUMBER.fullmatch(text):
        return text.replace(",", "").replace("$", "")
    return text


def split_gsm8k_answer(answer: str) -> tuple[str, str]:
    """GSM8K's ``answer`` field -> (reasoning without calculator annotations, final answer)."""
    if "####" not in answer:
        raise DataError("GSM8K answer has no '#### <final answer>' line")
    reasoning, final = answer.rsplit("####", 1)
    return _CALC.sub("", reasoning).strip(), _clean_number(final)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces matched), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug if slug and slug[0].isalpha() else f"d_{slug}" if slug else "external"


def _level_to_difficulty(level: Any) -> str:
    """MATH's "Level 1".."Level 5" (or 1..5) -> easy (1-2) / medium (3) / hard (4-5)."""
    match = re.search(r"\d+", str(level))
    if not match:
        return str(level).lower() if str(level).lower() in DIFFICULTIES else "unrated"
    n = int(match.group())
    return "easy" if n <= 2 else "medium" if n == 3 else "hard"


def map_record(record: Mapping[str, Any], *, source: str, index: int) -> dict[str, Any]:
    """Map one external record into the project schema.

    Recognized layouts: project schema (``prompt`` + ``answer`` [+ labels]); GSM8K
    (``question`` + ``answer`` with ``####``); MATH (``problem`` + ``solution`` [+ ``answer``,
    ``level``, ``type``/``subject``]). ``source`` names the dataset in ids and errors.
    """
    where = f"{source}: record {index}"
    keys = set(record)
    default_id = f"{_slug(source)}-{index:05d}"
    if {"question", "answer"} <= keys and "####" in str(record["answer"]):
        reasoning, answer = split_gsm8k_answer(str(record["answer"]))
        mapped = {"id": str(record.get("id", default_id)), "section": "math",
                  "category": "gsm8k", "difficulty": "unrated",
                  "prompt": str(record["question"]).strip(), "answer": answer}
        return {**mapped, "reasoning": reasoning} if reasoning else mapped
    if {"problem", "solution"} <= keys:
        solution = str(record["solution"])
        answer = record.get("answer")
        if answer is None or not str(answer).strip():
            answer = last_boxed(solution)
            if answer is None:
                raise DataError(f"{where}: MATH-style record has no 'answer' and no \\boxed{{}}")
        subject = record.get("type") or record.get("subject") or "math_problems"
        level = record.get("level", record.get("difficulty", ""))
        return {"id": str(record.get("unique_id", record.get("id", default_id))),
                "section": "math", "category": _slug(str(subject)),
                "difficulty": _level_to_difficulty(level) if level != "" else "unrated",
                "prompt": str(record["problem"]).strip(), "answer": _clean_number(str(answer)),
                "reasoning": solution.strip()}
    if {"prompt", "answer"} <= keys:
        item: dict[str, Any] = {
            "id": str(record.get("id") or default_id),
            "section": str(record.get("section") or "general"),
            "category": str(record.get("category") or _slug(source)),
            "difficulty": str(record.get("difficulty") or "unrated"),
            "prompt": str(record["prompt"]).strip(),
            "answer": str(record["answer"]).strip(),
        }
        if record.get("reasoning"):
            item["reasoning"] = str(record["reasoning"]).strip()
        return item
    raise DataError(
        f"{where}: unrecognized columns {sorted(keys)}; supported layouts: "
        "question+answer with '#### N' (GSM8K), problem+solution (MATH), prompt+answer"
    )


def _map_all(
    records: Iterable[Mapping[str, Any]], *, source: str, limit: int | None
) -> list[dict[str, Any]]:
    items = []
    for i, record in enumerate(records):
        if limit is not None and len(items) >= limit:
            break
        items.append(map_record(record, source=source, index=i))
    return validate_items(items, source=source)


# ------------------------------------------------------------------------------- HuggingFace


def load_hf(
    repo: str,
    config: str | None = None,
    split: str = "train",
    *,
    limit: int | None = None,
    cache_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Items from ``datasets.load_dataset(repo, config, split=split)``.

    ``repo`` is a hub id or a local directory laid out like a hub repo (data files plus a
    README whose YAML ``configs`` name the files of each config and split).
    """
    import datasets  # slow import (pyarrow, fsspec): only when HF data is asked for

    source = f"hf:{repo}" + (f":{config}" if config else "") + f"@{split}"
    try:
        ds = datasets.load_dataset(repo, config, split=split, cache_dir=cache_dir)
    except Exception as e:  # the library raises many types; all mean "cannot load this spec"
        hint = ""
        if isinstance(e, ConnectionError) or "offline" in str(e).lower():
            hint = " (no network or HF_HUB_OFFLINE=1, and no usable local copy)"
        raise DataError(f"{source}: cannot load ({type(e).__name__}: {e}){hint}") from e
    return _map_all(ds, source=source, limit=limit)


# ------------------------------------------------------------------------------------ Kaggle


def _read_table(path: Path) -> Iterator[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            try:
                yield from reader
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{reader.line_num + 1}: not UTF-8 text "
                                f"({e.reason}); save the file as UTF-8") from None
    elif suffix == ".jsonl":
        for lineno, line in _text_lines(path):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.start} is not valid UTF-8)") from None
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        yield from data
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(path).to_pylist()
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix!r}; allowed: {', '.join(_KAGGLE_SUFFIXES)}"
        )


def load_kaggle(handle: str, file: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Items from ``file`` inside the Kaggle dataset ``handle`` (``owner/dataset/versions/N``).

    Only that file is downloaded (``dataset_download(handle, path=file)``); kagglehub serves
    it from ``$KAGGLEHUB_CACHE`` without any API call when that version is already cached.
    """
    import kagglehub

    source = f"kaggle:{handle}/{file}"
    if not file.lower().endswith(_KAGGLE_SUFFIXES):
        raise DataError(f"{source}: unsupported file type; allowed: {', '.join(_KAGGLE_SUFFIXES)}")
    try:
        local = kagglehub.dataset_download(handle, path=file)
    except Exception as e:  # network, auth, 404: all mean "cannot load this spec"
        raise DataError(f"{source}: cannot download ({type(e).__name__}: {e})") from e
    path = Path(local)
    if path.is_dir():  # older kagglehub versions return the dataset folder
        path = path / file
    if not path.is_file():
        raise DataError(f"{source}: kagglehub returned {local}, which has no file {file!r}")
    return _map_all(_read_table(path), source=source, limit=limit)


# --------------------------------------------------------------------------------- data specs


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec; see the module docstring for the forms."""

    kind: str  # builtin | jsonl | hf | kaggle
    name: str  # split, path, repo or kaggle handle (owner/dataset/versions/N)
    config: str | None = None  # hf config
    split: str | None = None  # hf split
    file: str | None = None  # kaggle file inside the dataset


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string; raises DataError naming the spec and the allowed forms."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DataError(f"data spec {spec!r} is not allowed; use one of: {SPEC_FORMS}")
    kind, _, body = spec.partition(":")
    if kind == "builtin":
        if body not in BUILTIN_SPLITS:
            raise DataError(
                f"data spec {spec!r}: builtin split must be one of {', '.join(BUILTIN_SPLITS)}"
            )
        return DataSpec("builtin", body)
    if kind == "jsonl":
        if not body:
            raise DataError(f"data spec {spec!r}: missing path; use jsonl:<path>")
        return DataSpec("jsonl", body)
    if kind == "hf":
        split = "train"
        if "@" in body:
            body, split = body.rsplit("@", 1)
        repo, _, config = body.partition(":")
        if not repo or not split or (":" in body and not config):
            raise DataError(f"data spec {spec!r}: use hf:<repo>[:<config>][@<split>]")
        return DataSpec("hf", repo, config=config or None, split=split)
    if kind in GENERATED_KINDS:
        return DataSpec(kind, GENERATED_KINDS[kind][0](body))
    if kind == "kaggle":
        parts = body.split("/")
        if (len(parts) < 5 or parts[2] != "versions" or not parts[3].isdigit()
                or not all(parts)):
            raise DataError(
                f"data spec {spec!r}: use kaggle:<owner>/<dataset>/versions/<N>/<file> "
                "(the version number is required so that runs are reproducible)"
            )
        return DataSpec("kaggle", "/".join(parts[:4]), file="/".join(parts[4:]))
    raise DataError(f"data spec {spec!r}: unknown kind {kind!r}; use one of: {SPEC_FORMS}")


def load_items(spec: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Load, map and validate the items named by ``spec`` (first ``limit`` items if given)."""
    if limit is not None and limit < 1:
        raise DataError(f"data spec {spec!r}: limit must be >= 1 or None, got {limit}")
    parsed = parse_spec(spec)
    if parsed.kind == "builtin":
        return load_builtin(parsed.name, limit=limit)
    if parsed.kind == "jsonl":
        return load_jsonl(parsed.name, limit=limit)
    if parsed.kind in GENERATED_KINDS:
        return GENERATED_KINDS[parsed.kind][1](parsed.name, limit)
    if parsed.kind == "hf":
        return load_hf(parsed.name, parsed.config, parsed.split or "train", limit=limit)
    assert parsed.file is not None
    return load_kaggle(parsed.name, parsed.file, limit=limit)


def spec_list(specs: str | Sequence[str]) -> tuple[str, ...]:
    """A config's ``data.train`` / ``data.eval`` (one spec or a list of them) as a tuple."""
    return (specs,) if isinstance(specs, str) else tuple(specs)


def load_sources(
    specs: str | Sequence[str], limit: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Items of one data spec, or of a list of specs concatenated in order, and the count each
    spec gave (``[{"spec", "items"}]``, for the run record).

    ``limit`` applies to each spec (a mix such as GSM8K + reasoning-gym keeps every source's
    share predictable). Ids must be unique across the sources: scorecards and predictions are
    keyed by id.
    """
    items: list[dict[str, Any]] = []
    counts: list[dict[str, Any]] = []
    first: dict[str, str] = {}
    for spec in spec_list(specs):
        loaded = load_items(spec, limit=limit)
        for item in loaded:
            if item["id"] in first:
                raise DataError(f"data spec {spec!r}: item id {item['id']!r} is also in "
                                f"{first[item['id']]!r}; ids must be unique across a list of specs")
            first[item["id"]] = spec
        items.extend(loaded)
        counts.append({"spec": spec, "items": len(loaded)})
    return items, counts


def stratified(items: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` items taken round-robin over (section, category, difficulty), so a
    small evaluation still covers every group; order within a group is the file's order."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in items:
        key = (str(item.get("section")), str(item.get("category")), str(item.get("difficulty")))
        groups.setdefault(key, []).append(item)
    queues = [list(reversed(g)) for g in groups.values()]
    picked: list[dict[str, Any]] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop())
    return picked


def pick_eval_items(specs: str | Sequence[str], limit: int | None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The evaluation items of `specs` and each spec's counts (``[{"spec", "items",
    "evaluated"}]``, for the run record). A list of specs is one union: `limit`'s stratified
    pick covers every group of it."""
    items, sources = load_sources(specs)
    picked = stratified(items, limit)
    owners = [source["spec"] for source in sources for _ in range(source["items"])]
    spec_of = {item["id"]: spec for item, spec in zip(items, owners, strict=True)}
    counts = Counter(spec_of[item["id"]] for item in picked)
    return picked, [{**source, "evaluated": counts[source["spec"]]} for source in sources]
