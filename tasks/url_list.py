"""Reading and vetting a URL list (Parquet or CSV) before anything is fetched.

Bad input gets one `UrlListError` that names the problem. Rows that are readable but must
not be fetched (a non-http(s) scheme, a private or loopback address, no caption, a
duplicate) are *refused*: counted with their reason, never downloaded.
"""

from __future__ import annotations

import csv
import io
import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ids import pair_id

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


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
    """Why `url` must not be fetched, or None. Checks only what needs no DNS look-up."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "malformed_url"
    if parts.scheme.lower() not in ("http", "https"):
        return "bad_scheme"
    if not host:
        return "malformed_url"
    netloc = f"{host}:{port}" if port else host
    if allow_private or netloc in allowed_hosts:
        return None
    if host.lower() in LOOPBACK_NAMES:
        return "private_address"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None  # a name: resolving it here would need DNS
    if not ip.is_global:
        return "private_address"
    return None


def vet_url_list(
    urls: list, captions: list, allow_private: bool = False, allowed_hosts=frozenset()
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
