"""Item schema, jsonl files, the shipped data, and loaders for HF / Kaggle datasets.

All loaders return items in the project schema (``docs/DESIGN.md``): ``{"id", "section",
"category", "difficulty", "prompt", "answer"}`` (+ ``"reasoning"`` for SFT). External records
are mapped by their columns (:func:`map_record`).
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from kaggle_lib import jsonl
from kaggle_lib.answer_format import FORMAT_TAGS, format_tag_in
from kaggle_lib.data_spec import BUILTIN_SPLITS, DataError
from kaggle_lib.errors import format_validation_error

REQUIRED_FIELDS: tuple[str, ...] = ("id", "section", "category", "difficulty", "prompt", "answer")
# "unrated" is for external data that carries no difficulty (GSM8K).
Difficulty = Literal["easy", "medium", "hard", "unrated"]
DIFFICULTIES: tuple[str, ...] = get_args(Difficulty)
FILES_DIR = Path(__file__).resolve().parent / "files"
_LABEL = re.compile(r"[a-z][a-z0-9_]*")
_KAGGLE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")


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
    """One item; extra fields are kept. Labels are lower-case because scorecards group by them;
    strict: numbers are not strings."""

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


def validate_item(item: Any, *, where: str, require_reasoning: bool = False) -> dict[str, Any]:
    """Check one item against :class:`Item` and return it; the error names ``where`` and the
    first problem, missing fields first."""
    if not isinstance(item, Mapping):
        raise DataError(f"{where}: expected a JSON object, got {type(item).__name__}")
    fields = REQUIRED_FIELDS + (("reasoning",) if require_reasoning else ())

    def explain(error: dict[str, Any]) -> str:  # as 'field <name> ...: what is allowed'
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

    try:
        Item.model_validate(dict(item))
        errors = []
    except ValidationError as exc:
        errors = exc.errors()
    if require_reasoning and "reasoning" not in item:
        errors.append({"loc": ("reasoning",), "type": "missing"})
    if errors:
        first = min(errors, key=lambda e: e["type"] != "missing")  # missing fields first
        raise DataError(f"{where}: " + format_validation_error(
            [first], explain=explain, bullet=""))
    # The prompt format wraps reasoning and answer in these tags: one inside them would make
    # an eval item unscorable and teach a training target a broken format.
    for name in ("answer", "reasoning"):
        if name in item and (tag := format_tag_in(item[name])):
            raise DataError(f"{where}: field {name!r} holds the format tag {tag!r}; answers and "
                            f"reasoning must not contain {', '.join(FORMAT_TAGS)} (in any case): "
                            "the prompt format adds them")
    return dict(item)


def validate_items(items: Iterable[Any], *, source: str) -> list[dict[str, Any]]:
    """Validate items from ``source`` and check that ids are unique."""
    out: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        where = f"{source}: item {i}"
        checked = validate_item(item, where=where)
        if checked["id"] in seen:
            first = seen[checked["id"]]
            raise DataError(f"{where}: duplicate id {checked['id']!r} (first at item {first})")
        seen[checked["id"]] = i
        out.append(checked)
    return out


def load_jsonl(path: str | os.PathLike[str], *, require_reasoning: bool = False,
               limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` items of a jsonl file, validated; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    # Every non-blank line is an item or an error: the first `limit` of them are the items,
    # and a line after them is not read.
    for lineno, record in itertools.islice(jsonl.read_lines(path, error=DataError), limit):
        where = f"{path}:{lineno}"
        item = validate_item(record, where=where, require_reasoning=require_reasoning)
        if item["id"] in seen:
            raise DataError(f"{where}: duplicate id {item['id']!r} "
                            f"(first on line {seen[item['id']]})")
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
        raise DataError(f"builtin split {split!r} is not allowed; "
                        f"allowed: {', '.join(BUILTIN_SPLITS)}")
    return load_jsonl(FILES_DIR / f"{split}.jsonl", require_reasoning=split == "train", limit=limit)


_CALC = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations: "<<48/2=24>>"
_NUMBER = re.compile(r"-?\$?\d{1,3}(,\d{3})+(\.\d+)?|-?\$?\d+(\.\d+)?")


def _clean_number(text: str) -> str:
    """``"1,234"`` -> ``"1234"``, ``"$5"`` -> ``"5"``; other answers are only stripped."""
    text = text.strip().rstrip(".")
    return text.replace(",", "").replace("$", "") if _NUMBER.fullmatch(text) else text


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
    """One external record in the project schema: GSM8K (``question`` + ``answer`` with
    ``####``), MATH (``problem`` + ``solution`` [+ ``answer``, ``level``, ``type``/``subject``])
    or ours (``prompt`` + ``answer`` [+ labels]). ``source`` names the dataset in ids and errors.
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
            "prompt": str(record["prompt"]).strip(), "answer": str(record["answer"]).strip()}
        if record.get("reasoning"):
            item["reasoning"] = str(record["reasoning"]).strip()
        return item
    raise DataError(f"{where}: unrecognized columns {sorted(keys)}; supported layouts: "
                    "question+answer with '#### N' (GSM8K), problem+solution (MATH), prompt+answer")


def _map_all(records: Iterable[Mapping[str, Any]], *, source: str,
             limit: int | None) -> list[dict[str, Any]]:
    items = []
    for i, record in enumerate(records):
        if limit is not None and len(items) >= limit:
            break
        items.append(map_record(record, source=source, index=i))
    return validate_items(items, source=source)


def load_hf(repo: str, config: str | None = None, split: str = "train", *,
            limit: int | None = None) -> list[dict[str, Any]]:
    """Items from ``datasets.load_dataset(repo, config, split=split)``; ``repo`` is a hub id or
    a local directory laid out like a hub repo."""
    import datasets  # slow import (pyarrow, fsspec): only when HF data is asked for

    source = f"hf:{repo}" + (f":{config}" if config else "") + f"@{split}"
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as e:  # the library raises many types; all mean "cannot load this spec"
        offline = isinstance(e, ConnectionError) or "offline" in str(e).lower()
        hint = " (no network or HF_HUB_OFFLINE=1, and no usable local copy)" if offline else ""
        raise DataError(f"{source}: cannot load ({type(e).__name__}: {e}){hint}") from e
    return _map_all(ds, source=source, limit=limit)


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
        yield from (record for _, record in jsonl.read_lines(path, error=DataError))
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
        raise DataError(f"{path}: unsupported file type {suffix!r}; allowed: "
                        f"{', '.join(_KAGGLE_SUFFIXES)}")


def load_kaggle(handle: str, file: str, *, limit: int | None = None) -> list[dict[str, Any]]:
    """Items from ``file`` of the Kaggle dataset ``handle`` (``owner/dataset/versions/N``).
    Only that file is downloaded; kagglehub serves a cached version without any API call."""
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
