"""Reading examples from files: JSONL/JSON/CSV/TSV by extension (UTF-8, a byte-order mark allowed),
the few line formats of classic datasets, Hugging Face datasets and files shipped inside Python packages.

Every record carries its origin (`file:line`) so later errors can point at it.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata as md
import json
from collections.abc import Callable
from pathlib import Path

from ..errors import DataError

Record = tuple[dict[str, str], str]  # (columns, "file:line"); a JSON list value stays a list


def _label_text(path: Path) -> list[Record]:
    """`<label> <text>` a line (SST-2 in the few-shot-learning layout)."""
    out = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            label, sep, text = line.partition(" ")
            if not sep:
                raise DataError(f"{path}:{n}: expected '<label> <text>', got {line[:60]!r}")
            out.append(({"label": label, "text": text.strip()}, f"{path}:{n}"))
    return out


def _trec_coarse(path: Path) -> list[Record]:
    """`<COARSE>:<fine> <question>` a line (TREC); the label is the coarse class."""
    out = []
    for cols, origin in _label_text(path):
        coarse, sep, fine = cols["label"].partition(":")
        if not sep:
            raise DataError(f"{origin}: expected '<COARSE>:<fine> <question>'")
        out.append(({"label": coarse, "fine_label": fine, "text": cols["text"]}, origin))
    return out


def _bio(path: Path) -> list[Record]:
    """`word:TAG word:TAG ... <=> <intent>` a line, BIO slot tags (MIT Movies in the few-shot-learning
    layout). A record holds the `query` and, per slot type (lower-case, e.g. "director"), its spans'
    words joined by " | " in order of appearance."""
    out = []
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            tagged = line.split("<=>")[0].split()
            if not tagged:
                continue
            words, spans, current = [], {}, None
            for item in tagged:
                word, sep, tag = item.rpartition(":")
                if not sep or not (tag == "O" or tag[:2] in ("B-", "I-")):
                    raise DataError(f"{path}:{n}: expected word:TAG with a BIO tag, got {item[:40]!r}")
                words.append(word)
                if tag == "O":
                    current = None
                elif tag.startswith("B-") or current != tag[2:].lower():
                    current = tag[2:].lower()
                    spans.setdefault(current, []).append([word])
                else:
                    spans[current][-1].append(word)
            row = {"query": " ".join(words)} | {slot: " | ".join(" ".join(s) for s in found)
                                                 for slot, found in spans.items()}
            out.append((row, f"{path}:{n}"))
    return out


def _cause_effect(path: Path) -> list[Record]:
    """Instruction induction's cause_and_effect (`{"examples": {..: {cause, effect}}}`) as APE poses it: `input`
    is "Sentence 1: .. Sentence 2: .." and `output` the cause. APE draws the order of the two sentences at
    random on every load; here a hash of the pair fixes it, so each pair has the same order in every run and
    about half the pairs put the cause second."""
    out = []
    for cols, origin in _jsonl(path):
        missing = [k for k in ("cause", "effect") if not isinstance(cols.get(k), str)]
        if missing:
            raise DataError(f"{origin}: expected 'cause' and 'effect' texts; no {' or '.join(missing)}")
        cause, effect = cols["cause"], cols["effect"]
        first, second = (cause, effect) if _first_half(f"{cause}\n{effect}") else (effect, cause)
        out.append((cols | {"input": f"Sentence 1: {first} Sentence 2: {second}", "output": cause}, origin))
    return out


def _first_half(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] < 128


LINE_FORMATS: dict[str, Callable[[Path], list[Record]]] = {"label-text": _label_text, "trec-coarse": _trec_coarse,
                                                           "bio": _bio, "cause-effect": _cause_effect}


def _row(value: object, where: str) -> dict[str, str]:
    """A JSON object's columns as text; a list stays a list (a target over it gives several answers)."""
    if not isinstance(value, dict):
        raise DataError(f"{where}: each record must be a JSON object, not {type(value).__name__}")
    return {k: "" if v is None else v if isinstance(v, list) else str(v) for k, v in value.items()}


def _jsonl(path: Path) -> list[Record]:
    """One JSON object a line; a `.json` file may instead hold one JSON array of objects."""
    text = _read_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        return _json_array(path, text)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{") and (examples := _examples_of(text)):
        return _examples_object(path, examples)
    out = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
        out.append((_row(row, f"{path}:{n}"), f"{path}:{n}"))
    return out


def _json_array(path: Path, text: str) -> list[Record]:
    """A file holding one JSON array of objects; each record's origin is the line its object starts on."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(rows, list):  # pragma: no cover (the text starts with "[")
        raise DataError(f"{path}: expected a JSON array of objects")
    decoder, pos, out = json.JSONDecoder(), text.index("[") + 1, []
    for row in rows:  # walk the text again to find where each element starts (rows is already valid)
        while text[pos] in " \t\r\n,":
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        where = f"{path}:{text.count(chr(10), 0, pos) + 1}"
        out.append((_row(row, where), where))
        pos = end
    return out


def _examples_of(text: str) -> dict | None:
    """The "examples" mapping of a one-object .json file, or None (then it is read as JSON lines)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None
    examples = doc.get("examples") if isinstance(doc, dict) else None
    return examples if isinstance(examples, dict) else None


def _examples_object(path: Path, examples: dict) -> list[Record]:
    """`{"examples": {"1": {...}, ...}}` (instruction induction, as the APE repository ships it). A list of
    strings stays a list (e.g. `possible_translations`: several acceptable answers)."""
    out = []
    for key, value in examples.items():
        where = f"{path}:examples.{key}"
        if not isinstance(value, dict):
            raise DataError(f"{where}: each example must be a JSON object, not {type(value).__name__}")
        row = {k: [str(x) for x in v] if isinstance(v, list) else ("" if v is None else str(v))
               for k, v in value.items()}
        out.append((row, where))
    return out


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from None


def _delimited(path: Path, delimiter: str) -> list[Record]:
    out = []
    # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        if not reader.fieldnames:
            return []
        columns = ", ".join(reader.fieldnames)
        for row in reader:
            line = reader.line_num
            if None in row:
                raise DataError(f"{path}:{line}: more values than header columns ({columns})")
            missing = [k for k, v in row.items() if v is None]  # DictReader fills a short row with None
            if missing:
                raise DataError(f"{path}:{line}: a short row, {len(row) - len(missing)} of the header's {len(row)} "
                                f"columns ({columns}); missing: {', '.join(missing)}")
            out.append((dict(row), f"{path}:{line}"))
    return out


def _hf(spec: str) -> list[Record]:
    """`hf:<dataset>[/<config>]:<split>` through the `datasets` library (the `hf` extra)."""
    body = spec[3:]
    name, sep, split = body.rpartition(":")
    if not sep or not name or not split:
        raise DataError(f"'{spec}': expected hf:<dataset>[/<config>]:<split>")
    try:
        import datasets  # noqa: PLC0415 (optional extra)
    except ImportError:
        raise DataError(f"'{spec}' needs the datasets library: pip install 'prompttune[hf]'") from None
    parts = name.split("/")
    # "glue/sst2" is a dataset with a config, "org/name" a namespaced dataset: try both readings.
    attempts = [("/".join(parts[:2]), parts[2])] if len(parts) == 3 else [(name, None)]
    if len(parts) == 2:
        attempts.append((parts[0], parts[1]))
    error: Exception | None = None
    for dataset, config in attempts:
        try:
            ds = datasets.load_dataset(dataset, config, split=split)
            break
        except Exception as exc:  # datasets raises many types; the user needs the first line
            error = exc
    else:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"'{spec}': could not load ({first})")
    return [({k: v if isinstance(v, list) else str(v) for k, v in row.items()}, f"{spec}#{i}")
            for i, row in enumerate(ds)]


def resolve_path(spec: str, data_dir: Path | None) -> Path:
    if spec.startswith("package:"):
        dist, _, inner = spec[len("package:") :].partition("/")
        try:
            files = md.files(dist) or []
        except md.PackageNotFoundError:
            raise DataError(f"'{spec}': the package {dist} is not installed (pip install {dist})") from None
        for f in files:
            if str(f).replace("\\", "/").endswith(inner):
                return Path(f.locate())
        raise DataError(f"'{spec}': the package {dist} has no file {inner}")
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (data_dir or Path(".")) / path
    return path


def read_records(spec: str, data_dir: Path | None, fmt: str | None) -> list[Record]:
    if spec.startswith("hf:"):
        return _hf(spec)
    path = resolve_path(spec, data_dir)
    if not path.exists():
        hint = "" if data_dir else " (relative paths are read from --data-dir)"
        raise DataError(f"data file {path} does not exist{hint}")
    if fmt is not None:
        if fmt not in LINE_FORMATS:
            raise DataError(f"unknown data format '{fmt}' (known: {', '.join(LINE_FORMATS)})")
        return LINE_FORMATS[fmt](path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _jsonl(path)
    if suffix == ".csv":
        return _delimited(path, ",")
    if suffix == ".tsv":
        return _delimited(path, "\t")
    raise DataError(f"{path}: unknown file type '{suffix}' (use .jsonl, .json, .csv or .tsv, or set format:)")
