"""Loader for the Azure LLM inference trace CSV format, and the two shipped 2023 traces.

Format: header ``TIMESTAMP,ContextTokens,GeneratedTokens``; ``TIMESTAMP`` like
``2023-11-16 18:17:03.9799600`` (seven fractional digits), rows sorted ascending. Two optional
columns, together or not at all, describe shared prompt prefixes (``traces.trace``): ``PrefixId``
(integer, -1 = no shared prefix) and ``PrefixTokens`` (integer, 0 <= PrefixTokens <= ContextTokens,
0 when PrefixId is -1). The published Azure traces carry neither.
Parsing is vectorised (pandas, explicit timestamp format) so the shipped files load in tens of
milliseconds; only when a check fails is the first offending row looked up, so that the
``TraceError`` can name the file, the line (1-based, header = line 1) and the column.
"""

from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import numpy as np
import pandas as pd

from traces.trace import Trace, TraceError

TIMESTAMP_COLUMN = "TIMESTAMP"
INPUT_COLUMN = "ContextTokens"
OUTPUT_COLUMN = "GeneratedTokens"
COLUMNS = (TIMESTAMP_COLUMN, INPUT_COLUMN, OUTPUT_COLUMN)
PREFIX_ID_COLUMN = "PrefixId"
PREFIX_TOKENS_COLUMN = "PrefixTokens"
PREFIX_COLUMNS = (PREFIX_ID_COLUMN, PREFIX_TOKENS_COLUMN)

# The published files always carry a fraction; a whole-second stamp is accepted as a fallback.
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f"
TIMESTAMP_FORMAT_WHOLE_S = "%Y-%m-%d %H:%M:%S"

SHIPPED_KINDS = ("conv", "code")
_HEADER_LINE = 1


def shipped_trace_path(kind: str) -> Path:
    """Path of a shipped Azure 2023 trace (``kind`` in ``conv``, ``code``); see data/SOURCE.md."""
    if kind not in SHIPPED_KINDS:
        raise KeyError(f"unknown shipped Azure trace kind {kind!r}; known: {', '.join(SHIPPED_KINDS)}")
    resource = importlib.resources.files("traces") / "data" / f"AzureLLMInferenceTrace_{kind}.csv"
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"shipped trace {kind!r} is missing from the installed package: {path}")
    return path


@functools.lru_cache(maxsize=None)
def load_shipped_trace(kind: str) -> Trace:
    """The shipped trace, loaded once per process. Its arrays are read-only: the cache is shared."""
    trace = load_azure_trace(shipped_trace_path(kind), task_name=f"azure-{kind}")
    for column in (trace.arrival_s, trace.input_tokens, trace.output_tokens, trace.task):
        column.setflags(write=False)
    return trace


def load_azure_trace(path: str | Path, task_name: str = "default") -> Trace:
    """Read an Azure LLM inference trace CSV; ``arrival_s`` is seconds since the first row."""
    path = Path(path)
    frame, line = _read_frame(path)
    if len(frame) == 0:
        raise TraceError(f"{path}: empty trace: no data rows after the header (line {_HEADER_LINE})")
    input_tokens = _token_column(frame, line, INPUT_COLUMN, path)
    output_tokens = _token_column(frame, line, OUTPUT_COLUMN, path)
    arrival_s = _arrival_column(frame, line, path)
    return Trace(
        arrival_s=arrival_s,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        task=np.zeros(len(arrival_s), dtype=np.int64),
        task_names=(task_name,),
        source=str(path),
        **_prefix_columns(frame, line, input_tokens, path),
    )


def _prefix_columns(frame: pd.DataFrame, line: np.ndarray, input_tokens: np.ndarray, path: Path) -> dict:
    """The optional ``PrefixId`` / ``PrefixTokens`` columns as ``Trace`` keyword arguments (empty without)."""
    present = [c for c in PREFIX_COLUMNS if c in frame.columns]
    if not present:
        return {}
    if len(present) == 1:
        other = PREFIX_TOKENS_COLUMN if present[0] == PREFIX_ID_COLUMN else PREFIX_ID_COLUMN
        raise TraceError(f"{path}: row {_HEADER_LINE} (header): column {present[0]!r} needs column {other!r} too")
    prefix_id = _integer_column(frame, line, PREFIX_ID_COLUMN, path, "prefix id")
    prefix_tokens = _integer_column(frame, line, PREFIX_TOKENS_COLUMN, path, "prefix token count")
    checks = (
        (prefix_id < -1, PREFIX_ID_COLUMN, lambda i: f"prefix id {prefix_id[i]} is below -1 (-1: no shared prefix)"),
        (prefix_tokens < 0, PREFIX_TOKENS_COLUMN, lambda i: f"negative prefix token count {prefix_tokens[i]}"),
        (prefix_tokens > input_tokens, PREFIX_TOKENS_COLUMN,
         lambda i: f"{prefix_tokens[i]} prefix tokens exceed the {input_tokens[i]} {INPUT_COLUMN}"),
        ((prefix_id == -1) & (prefix_tokens != 0), PREFIX_TOKENS_COLUMN,
         lambda i: f"{prefix_tokens[i]} prefix tokens on a request without a prefix ({PREFIX_ID_COLUMN} -1); "
                   "must be 0"),
    )
    for bad, column, why in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise TraceError(f"{path}: row {line[i]} column {column!r}: {why(i)}")
    return {"prefix_id": prefix_id, "prefix_tokens": prefix_tokens}


def _integer_column(frame: pd.DataFrame, line: np.ndarray, column: str, path: Path, what: str) -> np.ndarray:
    """Whole numbers; the first row that is not one is named."""
    values = frame[column]
    if not pd.api.types.is_integer_dtype(values.dtype):
        numeric = pd.to_numeric(values, errors="coerce")
        is_int = numeric.notna() & np.isfinite(numeric) & (numeric == np.round(numeric))
        if not is_int.all():
            i = int(np.argmax(~is_int.to_numpy()))
            raise TraceError(f"{path}: row {line[i]} column {column!r}: {_show(values.iloc[i])} is not an integer {what}")
        values = numeric
    return values.to_numpy(dtype=np.int64)


def _read_frame(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Raw columns plus the file line of each row (blank lines dropped, numbering kept)."""
    if path.is_dir():
        raise TraceError(f"{path}: is a directory, not a trace file (expected an Azure-format CSV with header "
                         f"{','.join(COLUMNS)})")
    if not path.is_file():
        raise TraceError(f"{path}: trace file not found")
    try:
        frame = pd.read_csv(path, dtype={TIMESTAMP_COLUMN: str}, skip_blank_lines=False)
    except pd.errors.EmptyDataError:
        raise TraceError(f"{path}: empty file (expected header line {','.join(COLUMNS)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not a readable CSV trace: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise TraceError(
            f"{path}: row {_HEADER_LINE} (header): missing column {', '.join(repr(c) for c in missing)}; "
            f"found {list(frame.columns)}, expected {list(COLUMNS)}"
        )
    line = np.arange(len(frame), dtype=np.int64) + _HEADER_LINE + 1
    blank = frame[list(COLUMNS)].isna().all(axis=1).to_numpy()
    if blank.any():
        frame, line = frame.loc[~blank].reset_index(drop=True), line[~blank]
    return frame, line


def _token_column(frame: pd.DataFrame, line: np.ndarray, column: str, path: Path) -> np.ndarray:
    """Integer token counts >= 1; the first bad row is named."""
    tokens = _integer_column(frame, line, column, path, "token count")
    bad = tokens < 1
    if bad.any():
        i = int(np.argmax(bad))
        what = "negative" if tokens[i] < 0 else "zero"
        need = "a request needs at least one prompt token" if column == INPUT_COLUMN else (
            "a request that generates nothing cannot be simulated"
        )
        raise TraceError(f"{path}: row {line[i]} column {column!r}: {what} token count {tokens[i]} ({need})")
    return tokens


def _arrival_column(frame: pd.DataFrame, line: np.ndarray, path: Path) -> np.ndarray:
    """Seconds since the first row; timestamps must parse and be sorted ascending."""
    raw = frame[TIMESTAMP_COLUMN].str.strip()
    stamps = pd.to_datetime(raw, format=TIMESTAMP_FORMAT, errors="coerce")
    failed = stamps.isna()
    if failed.any():
        stamps = stamps.where(~failed, pd.to_datetime(raw, format=TIMESTAMP_FORMAT_WHOLE_S, errors="coerce"))
        failed = stamps.isna()
        if failed.any():
            i = int(np.argmax(failed.to_numpy()))
            raise TraceError(
                f"{path}: row {line[i]} column {TIMESTAMP_COLUMN!r}: cannot parse timestamp "
                f"{_show(frame[TIMESTAMP_COLUMN].iloc[i])} (expected like '2023-11-16 18:17:03.9799600')"
            )
    ns = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    backwards = np.diff(ns) < 0
    if backwards.any():
        i = int(np.argmax(backwards)) + 1
        raise TraceError(
            f"{path}: row {line[i]} column {TIMESTAMP_COLUMN!r}: timestamps not sorted ascending "
            f"({frame[TIMESTAMP_COLUMN].iloc[i]} is before {frame[TIMESTAMP_COLUMN].iloc[i - 1]} on row {line[i - 1]})"
        )
    return (ns - ns[0]).astype(np.float64) / 1e9


def _show(value: object) -> str:
    return "an empty value" if pd.isna(value) else repr(str(value))
