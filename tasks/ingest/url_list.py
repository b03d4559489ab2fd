"""Reading and vetting a URL list (Parquet or CSV) before anything is fetched.

Bad input gets one `UrlListError` that names the problem. Rows that are readable but must
not be fetched are *refused*: counted with their reason, never downloaded, never stored: a
non-http(s) scheme, credentials in the URL, an address that is not globally routable in any
spelling (tasks/ingest/addresses.py; names are checked when the download resolves them), no URL or
caption, a caption longer than the limit, a duplicate.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ingest.addresses import literal_refusal, normalise_host_port
from tasks.store.ids import pair_id

MAX_CAPTION_CHARS = 1000


class UrlListError(ValueError):
    """The URL list cannot be used as given; the message says why."""


@dataclass
class VettedList:
    urls: list[str] = field(default_factory=list)  # accepted rows, first occurrence order
    captions: list[str] = field(default_factory=list)
    pair_ids: list[str] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # reason -> count
    n_rows: int = 0  # rows in the list, accepted + refused


def _decode_strict(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UrlListError(f"{path} is not valid UTF-8 (byte {e.start}, line {line})") from None


def _read_csv(path: Path) -> tuple[list[str], dict[str, list]]:
    text = _decode_strict(path.read_bytes(), path)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        raise UrlListError(f"URL list {path} is empty (no header row)")
    rows = list(reader)
    columns = {name: [r[i] if i < len(r) else None for r in rows] for i, name in enumerate(header)}
    return header, columns


def _read_parquet(path: Path) -> tuple[list[str], dict[str, list]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise UrlListError(f"cannot read URL list {path} as Parquet: {e}") from None
    columns = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if pa.types.is_binary(table.column(name).type) or pa.types.is_large_binary(
            table.column(name).type
        ):
            for row, v in enumerate(values):
                if v is not None:
                    try:
                        values[row] = v.decode("utf-8")
                    except UnicodeDecodeError:
                        raise UrlListError(
                            f"{path}: column {name!r} row {row} is not valid UTF-8"
                        ) from None
        columns[name] = values
    return table.column_names, columns


def read_url_list(path: Path, url_col: str = "url", caption_col: str = "caption"):
    """Return (urls, captions) as lists of str | None. Raises UrlListError on bad input."""
    path = Path(path)
    if not path.is_file():
        raise UrlListError(f"URL list {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        names, columns = _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        names, columns = _read_csv(path)
    else:
        raise UrlListError(
            f"URL list {path}: unknown format {suffix!r} (use .parquet, .csv or .tsv)"
        )
    missing = [c for c in (url_col, caption_col) if c not in columns]
    if missing:
        raise UrlListError(
            f"URL list {path} has no column {', '.join(map(repr, missing))} "
            f"(columns found: {', '.join(names) or 'none'})"
        )
    urls, captions = columns[url_col], columns[caption_col]
    if not urls:
        raise UrlListError(f"URL list {path} is empty (no rows)")
    return urls, captions


def refusal_reason(url: str, allow_private: bool, allowed_hosts: frozenset[str]) -> str | None:
    """Why `url` must not be fetched, or None. Checks what needs no DNS look-up; the
    download checks names when it resolves them."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return "malformed_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "bad_scheme"
    if not host:
        return "malformed_url"
    if parts.username is not None or parts.password is not None:
        return "credentials_in_url"
    if allow_private or normalise_host_port(host, port, parts.scheme.lower()) in allowed_hosts:
        return None
    return literal_refusal(host)


def vet_url_list(
    urls: list,
    captions: list,
    allow_private: bool = False,
    allowed_hosts=frozenset(),
    max_caption_chars: int = MAX_CAPTION_CHARS,
) -> VettedList:
    out = VettedList(n_rows=len(urls))
    seen: set[str] = set()
    allowed_hosts = frozenset(allowed_hosts)
    for url, caption in zip(urls, captions, strict=True):
        if url is None or not str(url).strip():
            out.refused["missing_url"] += 1
            continue
        if caption is None or not str(caption).strip():
            out.refused["missing_caption"] += 1
            continue
        url, caption = str(url).strip(), str(caption)
        if len(caption) > max_caption_chars:
            out.refused["caption_too_long"] += 1
            continue
        reason = refusal_reason(url, allow_private, allowed_hosts)
        if reason:
            out.refused[reason] += 1
            continue
        pid = pair_id(url, caption)
        if pid in seen:
            out.refused["duplicate"] += 1
            continue
        seen.add(pid)
        out.urls.append(url)
        out.captions.append(caption)
        out.pair_ids.append(pid)
    return out
