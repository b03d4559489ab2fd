"""The workspace's tables on S3 (or any S3-compatible store): published there, queried there.

    marble publish s3://BUCKET/PREFIX        # data/raw, scores, pairs, results/evaluations, samples
    marble query --source s3://BUCKET/PREFIX "SELECT ..."
    marble ingest s3://BUCKET/lists/urls.parquet   # a URL list read from S3

Training and sampling read checkpoints, caches and locks from a POSIX folder (the workspace,
a shared volume on a cluster); what other people and machines read, the Parquet tables,
goes to object storage. `publish` uploads each table's Parquet files under a content-
addressed key (`PREFIX/<table>/<sha256 prefix>-<file name>`), then writes
`PREFIX/marble-manifest.json`, one PUT, last. Readers follow the manifest only, so a publish
that dies at any point leaves the previous manifest and every object it names in place; a
file already published with the same content is not uploaded again. Objects no manifest
names any more are deleted after the new manifest is written. A URL list named by an s3://
URL is copied into the workspace (`cache/url-lists/`) and ingested from there.

Credentials and the endpoint come from the standard AWS settings (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL for MinIO, moto or another S3-compatible store,
~/.aws/...), read by s3fs/botocore; marble never puts them in a URL, a log or a manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tasks.store.files import atomic_file
from tasks.store.workspace import Workspace

MANIFEST = "marble-manifest.json"
MANIFEST_VERSION = 1
DIGEST_CHARS = 16  # of the sha256 in an object's key
# S3's bucket naming rules: 3-63 lowercase letters, digits, '.', '-'; a letter or digit at
# each end; not an IPv4 address.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")
_SEGMENT = re.compile(r"[A-Za-z0-9._=+-]+")  # one part of a key prefix


class ObjectStoreError(ValueError):
    """A bad s3:// URL, a store that cannot be reached or read, or a missing manifest."""


def workspace_tables(workspace: Workspace) -> dict[str, Path]:
    """The Parquet tables of a workspace, by the name `marble query` gives their view."""
    return {
        "raw": workspace.raw,
        "scores": workspace.scores,
        "pairs": workspace.pairs,
        "evaluations": workspace.evaluations,
        "samples": workspace.samples,
        "verdicts": workspace.verdicts,
    }


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing '/')

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def key(self, *parts: str) -> str:
        """`bucket/prefix/parts...` as s3fs names an object."""
        return "/".join(p for p in (self.bucket, self.prefix, *parts) if p)


def parse_s3_url(text: str) -> S3Prefix:
    """Check `s3://BUCKET[/PREFIX]`; a ValueError names what is wrong."""
    parts = urlsplit(text.strip())
    login, at, host = parts.netloc.rpartition("@")
    text = parts._replace(netloc="***@" + host).geturl() if at else text  # never echo a secret
    if parts.scheme != "s3":
        raise ObjectStoreError(f"{text!r} is not an S3 URL: write s3://BUCKET[/PREFIX]")
    if at or ":" in parts.netloc:
        raise ObjectStoreError(
            f"{text!r}: no credentials or port in the URL (set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, and AWS_ENDPOINT_URL for another store)"
        )
    bucket = parts.netloc
    if not _BUCKET.fullmatch(bucket) or _IPV4.fullmatch(bucket) or ".." in bucket:
        raise ObjectStoreError(
            f"{text!r}: {bucket!r} is not a bucket name (3-63 lowercase letters, digits, "
            "'.' and '-', a letter or digit at each end)"
        )
    if parts.query or parts.fragment:
        raise ObjectStoreError(f"{text!r}: no '?' or '#' in an S3 URL")
    prefix = parts.path.strip("/")
    for segment in prefix.split("/") if prefix else ():
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ObjectStoreError(
                f"{text!r}: prefix part {segment!r} is not allowed (letters, digits and "
                "._=+- only; no empty, '.' or '..' parts)"
            )
    return S3Prefix(bucket, prefix)


def filesystem():
    """An s3fs filesystem configured from the standard AWS settings (no listing cache: a
    manifest read must see the newest one)."""
    try:
        import s3fs
    except ImportError:
        raise ObjectStoreError("S3 needs s3fs: pip install s3fs (marble's `scale` extra)") from None
    return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)


def check_writable(where: S3Prefix, fs=None) -> None:
    """Write and delete a probe object under `where`: an ObjectStoreError naming the problem
    (no such bucket, no credentials, access denied, nothing listening) before anything
    relies on the store."""
    fs = fs or filesystem()
    probe = where.key(f".marble-probe-{uuid.uuid4().hex[:12]}")
    try:
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except Exception as e:
        raise _store_error("write to", where, e) from None


def _store_error(action: str, where: S3Prefix, error: Exception) -> ObjectStoreError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return ObjectStoreError(f"cannot {action} {where}: {reason}")


def read_manifest(where: S3Prefix, fs=None) -> dict | None:
    """The manifest published at `where`, or None when there is none."""
    fs = fs or filesystem()
    try:
        data = fs.cat_file(where.key(MANIFEST))
    except FileNotFoundError:
        return None
    except Exception as e:  # botocore's errors: no credentials, no bucket, refused, ...
        raise _store_error("read", where, e) from None
    manifest = json.loads(data)
    if manifest.get("version") != MANIFEST_VERSION:
        raise ObjectStoreError(
            f"{where}/{MANIFEST} has version {manifest.get('version')!r}; this marble reads "
            f"version {MANIFEST_VERSION}"
        )
    return manifest


def _entries(manifest: dict | None) -> dict[str, dict]:
    """key -> entry of every object a manifest names."""
    if manifest is None:
        return {}
    return {e["key"]: e for files in manifest["tables"].values() for e in files}


def publish(workspace: Workspace, where: S3Prefix, log=print, fs=None) -> dict:
    """Upload the workspace's Parquet tables to `where` and write its manifest last (see the
    module docstring). Returns {"tables": {name: files}, "uploaded", "reused", "deleted",
    "bytes_uploaded"}."""
    fs = fs or filesystem()
    with workspace.lock("publish"):
        previous = _entries(read_manifest(where, fs))
        tables: dict[str, list[dict]] = {}
        uploaded = reused = sent = 0
        for name, folder in workspace_tables(workspace).items():
            files = sorted(Path(folder).glob("*.parquet"))
            if not files:
                continue
            tables[name] = []
            for path in files:
                try:
                    data = path.read_bytes()  # one read: the digest is of what is sent
                except FileNotFoundError:
                    raise ObjectStoreError(
                        f"{path} was replaced while publishing (a stage is writing {name}); "
                        "publish again when it has finished"
                    ) from None
                digest = hashlib.sha256(data).hexdigest()
                key = f"{name}/{digest[:DIGEST_CHARS]}-{path.name}"
                entry = {"key": key, "file": path.name, "bytes": len(data), "sha256": digest}
                if key in previous and previous[key]["sha256"] == digest:
                    reused += 1
                else:
                    try:
                        fs.pipe_file(where.key(key), data)
                    except Exception as e:
                        raise _store_error("write to", where, e) from None
                    uploaded += 1
                    sent += len(data)
                tables[name].append(entry)
            log(f"publish: {name}: {len(files)} file(s)")
        manifest = {
            "version": MANIFEST_VERSION,
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "workspace": str(workspace.root),
            "tables": tables,
        }
        try:
            fs.pipe_file(where.key(MANIFEST), json.dumps(manifest, indent=1).encode())
        except Exception as e:
            raise _store_error("write to", where, e) from None
        stale = sorted(set(previous) - set(_entries(manifest)))
        for key in stale:  # the new manifest is in place: nobody follows these any more
            try:
                fs.rm_file(where.key(key))
            except FileNotFoundError:
                pass
    log(f"publish: {uploaded} uploaded, {reused} unchanged, {len(stale)} deleted -> {where}")
    return {
        "tables": {name: len(files) for name, files in tables.items()},
        "uploaded": uploaded,
        "reused": reused,
        "deleted": len(stale),
        "bytes_uploaded": sent,
    }


def published_tables(where: S3Prefix, fs=None) -> dict[str, list[str]]:
    """table name -> the s3:// URLs of its Parquet files, as the manifest at `where` lists
    them; an ObjectStoreError when nothing was published there."""
    manifest = read_manifest(where, fs)
    if manifest is None:
        raise ObjectStoreError(
            f"nothing is published at {where} (no {MANIFEST}); run marble publish"
        )
    return {
        name: [f"s3://{where.key(e['key'])}" for e in files]
        for name, files in manifest["tables"].items()
    }


# ---------------------------------------------------------------------------- reading one file

URL_LIST_SUFFIXES = (".parquet", ".csv", ".tsv")


def is_s3(text: str | None) -> bool:
    return text is not None and text.strip().lower().startswith("s3:")


def parse_s3_file(text: str) -> S3Prefix:
    """Check `s3://BUCKET/KEY` of a URL list: a key that ends in .parquet, .csv or .tsv."""
    where = parse_s3_url(text)
    if not where.prefix.lower().endswith(URL_LIST_SUFFIXES):
        raise ObjectStoreError(
            f"{where} is not a URL list: name an object ending in .parquet, .csv or .tsv"
        )
    return where


def download_file(text: str, folder: Path, fs=None) -> Path:
    """Copy the object `s3://BUCKET/KEY` to `folder`, as `<hash of the URL>-<file name>`,
    written whole or not at all; returns the local path. Fetched anew each time (the object
    may have changed); what reads the copy digests it."""
    where = parse_s3_file(text)
    fs = fs or filesystem()
    name = where.prefix.rsplit("/", 1)[-1]
    path = Path(folder) / f"{hashlib.sha256(str(where).encode()).hexdigest()[:12]}-{name}"
    try:
        with atomic_file(path) as partial:
            fs.get_file(where.key(), str(partial))
    except FileNotFoundError:
        raise ObjectStoreError(f"URL list {where} does not exist") from None
    except Exception as e:
        raise _store_error("read", where, e) from None
    return path
