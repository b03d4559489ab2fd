"""Ingest: a URL list -> img2dataset Parquet shards under data/raw/, each row with its pair_id.

    ingest(IngestConfig(url_list=...), workspace) -> IngestManifest

1. Read and vet the list (tasks/ingest/url_list.py): refused rows are counted, never fetched.
2. Skip pairs already downloaded successfully: a rerun fetches only what is missing
   (new pairs and earlier failures).
3. Download the rest with img2dataset, through the vetting proxy (tasks/ingest/fetch_proxy.py),
   into a staging folder of its own (`data/.raw.staging-<key>`, keyed by the pairs and the
   settings) in img2dataset's incremental mode: after a crash, a rerun of the same work
   resumes the unfinished shards.
4. Build the new `data/raw/` in a temporary folder (old shards, minus rows being retried,
   plus the new shards) and rename it into place; write the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.ingest import addresses, fetch_proxy, url_list
from tasks.ingest.addresses import normalise_host_port
from tasks.ingest.fetch_proxy import REFUSED, FetchPolicy, proxy_environment, vetting_proxy
from tasks.ingest.url_list import MAX_CAPTION_CHARS, UrlListError, read_url_list, vet_url_list
from tasks.store.digests import files_digest, json_digest, source_digest
from tasks.store.files import atomic_dir, atomic_write_bytes
from tasks.store.pairs import raw_content_plan
from tasks.store.workspace import Workspace


def _allowed_host(text: str) -> str:
    """An allow-list entry "HOST:PORT" (IPv6 in brackets), normalised; ValueError if not."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"allowed host {text!r} is not HOST:PORT (e.g. 127.0.0.1:8737)")
    return normalise_host_port(host.strip("[]"), int(port))


MANIFEST = "_manifest.json"
SPARK_MASTER = re.compile(r"local(\[(\d+|\*)(,\d+)?\])?|spark://\S+|yarn|k8s://\S+")


@dataclass(frozen=True)
class IngestConfig:
    url_list: Path  # Parquet, CSV or TSV with a URL and a caption column
    url_col: str = "url"
    caption_col: str = "caption"
    image_size: int = 32  # output side in pixels
    resize_mode: Literal["center_crop", "border", "keep_ratio", "no"] = "center_crop"
    encode_format: Literal["png", "jpg", "webp"] = "png"  # png: lossless, tiny at 32 px
    processes: int = 2
    threads: int = 32
    shard_size: int = 1000  # rows per Parquet shard
    timeout_s: int = 10
    retries: int = 1
    allow_private: bool = False  # fetch private/loopback addresses (off: refused)
    allowed_hosts: tuple[str, ...] = ()  # host:port allowed even if private (built-in source)
    max_caption_chars: int = MAX_CAPTION_CHARS  # longer captions are refused
    max_body_bytes: int = 10 << 20  # a larger response is refused or cut off
    max_pixels: int = 40_000_000  # an image declaring more is refused before decoding
    retry_failed: bool = False  # rerun an unchanged list to retry its failed downloads
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    spark_master: str = ""  # pyspark only; empty: local[processes] in the download process

    def __post_init__(self):
        if not 8 <= self.image_size <= 4096:
            raise UrlListError(
                f"image_size must be between 8 and 4096 pixels, got {self.image_size}"
            )
        if not 1 <= self.shard_size <= 1_000_000:
            raise UrlListError(f"shard_size must be between 1 and 1,000,000, got {self.shard_size}")
        if self.processes < 1 or self.threads < 1 or self.timeout_s < 1 or self.retries < 0:
            raise UrlListError("processes, threads and timeout_s must be >= 1 and retries >= 0")
        for name in ("max_caption_chars", "max_body_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise UrlListError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            hosts = tuple(_allowed_host(h) for h in self.allowed_hosts)
        except ValueError as e:
            raise UrlListError(str(e)) from None
        object.__setattr__(self, "allowed_hosts", hosts)
        if self.spark_master and self.distributor != "pyspark":
            raise UrlListError("spark_master applies to the pyspark distributor only")
        if self.spark_master and not SPARK_MASTER.fullmatch(self.spark_master):
            raise UrlListError(
                f"spark_master {self.spark_master!r} is not a Spark master URL "
                "(local[N], local[*], spark://HOST:PORT, yarn or k8s://URL)"
            )


@dataclass
class IngestManifest:
    url_list: str
    list_rows: int
    accepted: int
    refused: dict[str, int]
    already_present: int  # accepted pairs skipped: downloaded successfully before
    attempted: int  # pairs handed to img2dataset in this run
    status_counts: dict[str, int]  # of this run's attempts
    error_counts: dict[str, int]  # of this run's failures, by error message
    total_status_counts: dict[str, int]  # over all of data/raw
    download_s: float
    wall_s: float
    pairs_per_s: float  # attempted / download_s
    raw_dir: str
    refused_at_fetch: dict[str, int] = field(default_factory=dict)  # by the vetting proxy
    inputs_digest: str = ""  # list, settings and code: a rerun with the same is skipped
    # over all of data/raw's images: content groups, pairs whose picture another pair shows
    # too, duplicates (same picture and caption as an earlier pair); tasks/store/content.py
    content: dict[str, int] = field(default_factory=dict)
    finished: str = ""  # when this run wrote data/raw
    skipped: str = ""  # why this run did nothing (empty when it ran)
    history: list[dict] = field(default_factory=list)  # earlier runs, oldest first


# ---------------------------------------------------------------------------- reading raw


def raw_shards(raw_dir: Path) -> list[Path]:
    return sorted(Path(raw_dir).glob("*.parquet"))


def read_raw_index(raw_dir: Path) -> pa.Table:
    """pair_id and status of every row in data/raw (empty table when there is none)."""
    shards = raw_shards(raw_dir)
    if not shards:
        return pa.table({"pair_id": pa.array([], pa.string()), "status": pa.array([], pa.string())})
    return pa.concat_tables(pq.read_table(s, columns=["pair_id", "status"]) for s in shards)


def _error_class(message: str | None) -> str:
    """Group error messages: drop addresses and numbers that differ between rows. A refusal
    of the vetting proxy is its reason; a decoder's pixel limit is `too_many_pixels`."""
    if message and REFUSED in message:
        return "refused:" + message.split(f"{REFUSED}:", 1)[-1].split()[0]
    if message and "CV_IO_MAX_IMAGE_PIXELS" in message:
        return "refused:too_many_pixels"
    text = re.sub(r"https?://\S+", "<url>", message or "unknown")
    text = re.sub(r"\d{3,}", "<n>", text)
    return text[:120]


# ---------------------------------------------------------------------------- download


def _download(cfg: IngestConfig, urls, captions, ids, staging: Path, env: dict) -> Path:
    """Run img2dataset into staging/out, resuming an interrupted run of the same pairs, in a
    process of its own whose environment is `env` (the vetting proxy's)."""
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()
    settings = {"digest": digest, **{k: str(v) for k, v in asdict(cfg).items()}}
    marker = staging / "todo.json"
    if not marker.exists() or json.loads(marker.read_text()) != settings:
        shutil.rmtree(staging, ignore_errors=True)  # another list or settings: start afresh
        staging.mkdir(parents=True)
        pq.write_table(
            pa.table({"url": urls, "caption": captions, "pair_id": ids}), staging / "input.parquet"
        )
        atomic_write_bytes(marker, json.dumps(settings).encode())
    shards = max(1, -(-len(ids) // cfg.shard_size))
    arguments = dict(
        url_list=str(staging / "input.parquet"),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        save_additional_columns=["pair_id"],
        output_format="parquet",
        output_folder=str(staging / "out"),
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        encode_format=cfg.encode_format,
        encode_quality=9 if cfg.encode_format == "png" else 95,  # png: compression level
        # a process downloads one shard at a time: more processes than shards would only
        # start (each imports img2dataset, 1.5 s) and wait
        processes_count=min(cfg.processes, shards),
        thread_count=cfg.threads,
        number_sample_per_shard=cfg.shard_size,
        subjob_size=shards,
        timeout=cfg.timeout_s,
        retries=cfg.retries,
        incremental_mode="incremental",
        distributor=cfg.distributor,
        enable_wandb=False,
        extract_exif=False,
        disallowed_header_directives=[],
    )
    args_path = staging / "download.json"
    atomic_write_bytes(args_path, json.dumps(arguments).encode())
    command = [sys.executable, "-m", "tasks.ingest.img2dataset_run", str(args_path)]
    if cfg.distributor == "pyspark":
        command += ["--spark-master", cfg.spark_master or f"local[{cfg.processes}]"]
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"img2dataset ended with status {result.returncode} (output above)")
    return staging / "out"


def _assemble(raw_dir: Path, new_dir: Path, retried: set[str], batch: str, out: Path) -> None:
    """Fill `out` with the old shards (rows in `retried` dropped) and the new ones, each new
    shard's rows in the URL list's order."""
    for shard in raw_shards(raw_dir):
        table = pq.read_table(shard, columns=["pair_id"])
        drop = pc.is_in(table["pair_id"], value_set=pa.array(sorted(retried), pa.string()))
        if not pc.any(drop).as_py():
            os.link(shard, out / shard.name)  # unchanged: share the file, no copy
            continue
        kept = pq.read_table(shard).filter(pc.invert(drop))
        if kept.num_rows:
            pq.write_table(kept, out / shard.name)
    for shard in sorted(new_dir.glob("*.parquet")):
        # img2dataset writes rows as its threads finish them; in the list's order (its key)
        # every later stage reads the same rows in the same order, run after run
        pq.write_table(pq.read_table(shard).sort_by("key"), out / f"{batch}-{shard.name}")


def ingest(cfg: IngestConfig, workspace: Workspace, log=print) -> IngestManifest:
    """Vet, download and swap in the new data/raw (see the module docstring); one ingest at a
    time per workspace (a second stops with one line naming the first)."""
    with workspace.lock("raw"):
        return _ingest(cfg, workspace, log)


def _inputs(cfg: IngestConfig) -> str:
    """Digest of what data/raw is made from: the list's bytes, the settings that change
    what is fetched or stored, and this code."""
    settings = {
        k: v for k, v in asdict(cfg).items()
        if k not in ("url_list", "processes", "threads", "distributor", "spark_master",
                     "retry_failed")
    }  # fmt: skip
    code = source_digest(sys.modules[__name__], url_list, addresses, fetch_proxy)
    return json_digest({"list": files_digest([cfg.url_list]), "settings": settings, "code": code})


def _ingest(cfg: IngestConfig, workspace: Workspace, log) -> IngestManifest:
    t0 = time.perf_counter()
    urls, captions = read_url_list(cfg.url_list, cfg.url_col, cfg.caption_col)
    inputs = _inputs(cfg)
    previous = workspace.raw / MANIFEST
    if previous.exists() and not cfg.retry_failed:
        last = json.loads(previous.read_text())
        if last.get("inputs_digest") == inputs:
            history = last.pop("history", [])
            log(f"ingest: skipped, the same list and settings as the run of {last['finished']}")
            return IngestManifest(
                **last
                | {"skipped": f"inputs unchanged since {last['finished']}", "history": history}
            )
    vetted = vet_url_list(
        urls, captions, cfg.allow_private, frozenset(cfg.allowed_hosts), cfg.max_caption_chars
    )
    raw_dir = workspace.raw

    index = read_raw_index(raw_dir)
    succeeded = set(pc.filter(index["pair_id"], pc.equal(index["status"], "success")).to_pylist())
    todo = [k for k, pid in enumerate(vetted.pair_ids) if pid not in succeeded]
    log(
        f"ingest: {vetted.n_rows} rows, {len(vetted.pair_ids)} accepted, "
        f"{sum(vetted.refused.values())} refused {dict(vetted.refused)}, "
        f"{len(vetted.pair_ids) - len(todo)} already present, {len(todo)} to download"
    )

    status_counts: Counter = Counter()
    fetch_refusals: Counter = Counter()
    error_counts: Counter = Counter()
    download_s = 0.0
    if todo:
        ids = [vetted.pair_ids[k] for k in todo]
        key = hashlib.sha1(("\n".join(ids) + repr(cfg)).encode()).hexdigest()[:12]
        staging = workspace.staging("raw", key)
        for other in staging.parent.glob(".raw.staging-*"):  # other work a crash left
            if other != staging:
                shutil.rmtree(other, ignore_errors=True)
        t1 = time.perf_counter()
        policy = FetchPolicy(
            allowed_hosts=frozenset(cfg.allowed_hosts),
            allow_private=cfg.allow_private,
            max_body_bytes=cfg.max_body_bytes,
            max_pixels=cfg.max_pixels,
            timeout_s=cfg.timeout_s,
        )
        with vetting_proxy(policy) as proxy:
            new_dir = _download(
                cfg, [vetted.urls[k] for k in todo], [vetted.captions[k] for k in todo], ids,
                staging, proxy_environment(proxy, cfg.max_pixels),
            )  # fmt: skip
        download_s = time.perf_counter() - t1
        fetch_refusals = policy.refusals
        new_rows = pa.concat_tables(
            pq.read_table(s, columns=["status", "error_message"]) for s in new_dir.glob("*.parquet")
        )
        status_counts.update(new_rows["status"].to_pylist())
        failed = pc.not_equal(new_rows["status"], "success")
        error_counts.update(
            map(_error_class, pc.filter(new_rows["error_message"], failed).to_pylist())
        )
        batch = (
            time.strftime("%Y%m%dT%H%M%S")
            + "-"
            + hashlib.sha1("".join(ids).encode()).hexdigest()[:6]
        )
        with atomic_dir(raw_dir) as out:
            _assemble(raw_dir, new_dir, set(ids), batch, out)
            previous = raw_dir / MANIFEST
            if previous.exists():
                shutil.copyfile(previous, out / MANIFEST)
        shutil.rmtree(staging, ignore_errors=True)

    raw_dir.mkdir(parents=True, exist_ok=True)
    total = Counter(read_raw_index(raw_dir)["status"].to_pylist())
    content = raw_content_plan(raw_dir).counts() if total.get("success") else {}
    if content.get("pairs_in_shared_groups"):
        log(
            f"ingest: {content['pairs_in_shared_groups']} of {content['images']} images share "
            f"a picture (exact or near copy) with another; {content['duplicates']} are "
            "duplicates (same picture and caption), dropped by the filter"
        )
    previous = raw_dir / MANIFEST
    history = []
    if previous.exists():
        old = json.loads(previous.read_text())
        history = old.pop("history", []) + [old]
    manifest = IngestManifest(
        url_list=str(cfg.url_list),
        list_rows=vetted.n_rows,
        accepted=len(vetted.pair_ids),
        refused=dict(vetted.refused),
        already_present=len(vetted.pair_ids) - len(todo),
        attempted=len(todo),
        status_counts=dict(status_counts),
        error_counts=dict(error_counts),
        total_status_counts=dict(total),
        download_s=round(download_s, 3),
        wall_s=round(time.perf_counter() - t0, 3),
        pairs_per_s=round(len(todo) / download_s, 1) if download_s else 0.0,
        raw_dir=str(raw_dir),
        refused_at_fetch=dict(fetch_refusals),
        inputs_digest=inputs,
        content=content,
        finished=time.strftime("%Y-%m-%d %H:%M:%S"),
        history=history,
    )
    atomic_write_bytes(previous, json.dumps(asdict(manifest), indent=2).encode())
    return manifest
