"""Ingest with img2dataset on loopback: exact counts, refusals, reruns, crashes, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import tasks.ingest.download as ingest_mod
from tasks.ingest.download import IngestConfig, ingest, raw_shards, read_raw_index
from tasks.ingest.url_list import UrlListError, refusal_reason
from tasks.store.workspace import Workspace

pytestmark = pytest.mark.slow

N_EACH = 6  # FAULTY_SPEC: 5 % of 120 pairs per fault kind
EXPECTED = {
    "success": 120 - 3 * N_EACH,
    "failed_to_download": N_EACH,
    "failed_to_resize": 2 * N_EACH,
}
# slow and redirect succeed; 404 fails to download; corrupt and truncated bytes fail to decode


def _config(source, **kw) -> IngestConfig:
    host = source.base_url.removeprefix("http://")
    return IngestConfig(
        **({"url_list": source.url_list, "allowed_hosts": (host,), "shard_size": 50} | kw)
    )


def _rows(workspace: Workspace) -> dict[str, tuple]:
    rows = pa.concat_tables(pq.read_table(s) for s in raw_shards(workspace.raw)).to_pylist()
    return {r["pair_id"]: (r["status"], r["caption"], r["png"]) for r in rows}


@pytest.fixture(scope="module")
def ingested(faulty_source, tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("ingested"))
    manifest = ingest(_config(faulty_source), workspace)
    return workspace, manifest


def test_counts_match_the_injected_faults(ingested, faulty_source):
    workspace, manifest = ingested
    assert manifest.status_counts == EXPECTED
    assert manifest.total_status_counts == EXPECTED
    assert manifest.attempted == 120 and manifest.refused == {}
    assert manifest.error_counts["HTTP Error <n>: Not Found"] == N_EACH
    assert json.loads((workspace.raw / "_manifest.json").read_text())["status_counts"] == EXPECTED
    truth = {r["pair_id"]: r for r in pq.read_table(faulty_source.truth).to_pylist()}
    rows = _rows(workspace)
    assert set(rows) == set(truth)  # every row carries its pair_id
    for pid, (status, caption, png) in rows.items():
        assert caption == truth[pid]["caption"]
        assert (status == "success") == (truth[pid]["fault"] in (None, "slow", "redirect"))
        assert (png is not None) == (status == "success")


def test_rows_follow_the_url_list_whatever_order_the_downloads_finish(ingested):
    """img2dataset's threads finish in any order; the raw shards hold rows in the list's
    order (its key), so every later stage reads the same data in the same order."""
    workspace, _ = ingested
    for shard in raw_shards(workspace.raw):
        keys = pq.read_table(shard, columns=["key"]).column("key").to_pylist()
        assert keys == sorted(keys), shard.name


def test_assemble_sorts_a_new_shard_by_key(tmp_path):
    new, out = tmp_path / "new", tmp_path / "out"
    new.mkdir(), out.mkdir()
    shuffled = pa.table(
        {"key": ["000000002", "000000000", "000000001"], "pair_id": ["c", "a", "b"]}
    )
    pq.write_table(shuffled, new / "00000.parquet")
    ingest_mod._assemble(tmp_path / "no-raw-yet", new, set(), "b1", out)
    (written,) = out.iterdir()
    assert pq.read_table(written).column("pair_id").to_pylist() == ["a", "b", "c"]


def test_the_download_process_and_its_workers_leave_torch_unloaded():
    # A spawned worker imports the main module as __mp_main__ before anything else, as here;
    # img2dataset then imports webdataset, which loads torch when it can (2 s a process).
    code = (
        "import runpy, sys\n"
        "runpy.run_module('tasks.ingest.img2dataset_run', run_name='__mp_main__')\n"
        "import img2dataset.downloader, img2dataset.writer\n"
        "print(sys.modules.get('torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "None"
    # imported as a module (not the program), it leaves torch importable
    code = "import tasks.ingest.img2dataset_run, torch\nprint(torch.tensor([2]).item())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "2", out.stderr[-2000:]


@pytest.mark.parametrize(
    "pairs, shard_size, processes, expected",
    [(120, 1000, 2, 1), (120, 120, 4, 1), (121, 120, 4, 2), (120, 50, 2, 2), (120, 10, 3, 3)],
)
def test_download_starts_no_more_processes_than_shards(
    tmp_path, monkeypatch, pairs, shard_size, processes, expected
):
    seen = {}

    def run(command, env):  # stands in for the img2dataset process: reads what it is given
        seen.update(json.loads((tmp_path / "staging" / "download.json").read_text()))
        return ingest_mod.subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(ingest_mod.subprocess, "run", run)
    cfg = IngestConfig(tmp_path / "list.parquet", processes=processes, shard_size=shard_size)
    ids = [f"p{i}" for i in range(pairs)]
    with pytest.raises(RuntimeError, match="img2dataset ended with status 3"):
        ingest_mod._download(cfg, ids, ids, ids, tmp_path / "staging", {})
    assert seen["processes_count"] == expected
    assert seen["subjob_size"] == -(-pairs // shard_size)  # every shard in one subjob


def test_rerun_downloads_nothing_new(ingested, faulty_source):
    workspace, first = ingested
    before = _rows(workspace)
    skipped = ingest(_config(faulty_source), workspace)  # the same list and settings
    assert skipped.skipped.startswith("inputs unchanged since") and _rows(workspace) == before
    assert skipped.status_counts == first.status_counts and skipped.history == []
    again = ingest(_config(faulty_source, retry_failed=True), workspace)
    # only the failures are tried again (and fail again, the server is deterministic)
    assert again.already_present == EXPECTED["success"]
    assert again.attempted == 120 - EXPECTED["success"]
    assert _rows(workspace) == before
    assert again.total_status_counts == EXPECTED
    assert len(again.history) == 1


def test_rerun_after_a_crash_gives_the_same_rows(ingested, faulty_source, tmp_path, monkeypatch):
    reference, _ = ingested
    workspace = Workspace(tmp_path / "home")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after the download")

    monkeypatch.setattr(ingest_mod, "_assemble", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ingest(_config(faulty_source), workspace)
    assert not raw_shards(workspace.raw)  # nothing half-written under the final name
    (staging,) = workspace.raw.parent.glob(".raw.staging-*")
    staging = staging / "out"
    # make one shard look unfinished, as if the crash came mid-download
    (staging / "00001_stats.json").unlink()
    (staging / "00001.parquet").unlink()
    monkeypatch.undo()
    manifest = ingest(_config(faulty_source), workspace)
    assert manifest.status_counts == EXPECTED
    assert _rows(workspace) == _rows(reference)
    assert not list(workspace.raw.parent.glob(".raw.staging-*"))


def test_a_longer_list_fetches_only_what_is_missing(ingested, faulty_source, tmp_path):
    workspace = Workspace(tmp_path / "home")
    shutil.copytree(ingested[0].raw, workspace.raw)
    urls = pq.read_table(faulty_source.url_list)
    base = faulty_source.base_url
    extra = pa.table({"url": [f"{base}/shapes/0/{i}.png" for i in (7, 8)], "caption": ["x", "y"]})
    longer = tmp_path / "longer.parquet"
    pq.write_table(pa.concat_tables([urls, extra]), longer)
    cfg = IngestConfig(url_list=longer, allowed_hosts=(base.removeprefix("http://"),))
    manifest = ingest(cfg, workspace)
    assert manifest.attempted == 2 + (120 - EXPECTED["success"])
    assert manifest.total_status_counts["success"] == EXPECTED["success"] + 2


def test_refused_rows_are_counted_and_never_fetched(faulty_source, tmp_path, workspace):
    good = pq.read_table(faulty_source.url_list).slice(0, 3).to_pylist()
    bad = [
        "file:///etc/passwd",
        "ftp://example.org/a.png",
        "data:image/png;base64,AAAA",
        "http://10.1.2.3/a.png",
        "http://localhost/a.png",
        "http://[::1]:8080/a.png",
        "http://127.0.0.1:9/a.png",  # loopback but not the allowed host:port
        "http//missing-colon",
    ]
    rows = good + [{"url": u, "caption": "a caption"} for u in bad] + [good[0]]
    path = tmp_path / "list.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    host = faulty_source.base_url.removeprefix("http://")
    manifest = ingest(IngestConfig(url_list=path, allowed_hosts=(host,)), workspace)
    assert manifest.refused == {
        "bad_scheme": 4,
        "private_address": 1,
        "loopback_address": 3,
        "duplicate": 1,
    }
    assert manifest.attempted == 3 and manifest.list_rows == len(rows)


def test_refusal_rules():
    none = frozenset()
    assert refusal_reason("https://example.org/a.jpg", False, none) is None
    assert refusal_reason("http://192.168.1.1/a.jpg", False, none) == "private_address"
    assert refusal_reason("http://user:pw@example.org/a.jpg", False, none) == "credentials_in_url"
    assert refusal_reason("http://192.168.1.1/a.jpg", True, none) is None
    assert refusal_reason("http://127.0.0.1:5/a", False, frozenset({"127.0.0.1:5"})) is None
    assert refusal_reason("HTTPS://8.8.8.8/a", False, none) is None
    assert refusal_reason("http://[fe80::1]/a", False, none) == "link_local_address"
    assert refusal_reason("http://169.254.169.254/latest", False, none) == "link_local_address"
    assert refusal_reason("javascript:alert(1)", False, none) == "bad_scheme"


# ---------------------------------------------------------------------------- bad input


def _write_csv(path, text: bytes):
    path.write_bytes(text)
    return path


def test_missing_column_names_the_columns_found(tmp_path, workspace):
    path = tmp_path / "l.parquet"
    pq.write_table(pa.table({"link": ["http://a/b"], "text": ["c"]}), path)
    with pytest.raises(
        UrlListError, match=r"no column 'url', 'caption' \(columns found: link, text\)"
    ):
        ingest(IngestConfig(url_list=path), workspace)
    assert not workspace.raw.exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.csv", b"", "empty"),
        ("header.csv", b"url,caption\n", "empty"),
        (
            "latin1.csv",
            b"url,caption\nhttp://a/b.png,caf\xe9\n",
            r"not valid UTF-8 \(byte 30, line 2\)",
        ),
        ("broken.parquet", b"PAR1 this is not parquet", "cannot read URL list"),
        ("list.json", b"{}", "unknown format"),
    ],
)
def test_bad_files(tmp_path, workspace, name, content, message):
    path = _write_csv(tmp_path / name, content)
    with pytest.raises(UrlListError, match=message):
        ingest(IngestConfig(url_list=path), workspace)
    assert not workspace.raw.exists()


def test_missing_file_and_absurd_sizes(tmp_path, workspace):
    with pytest.raises(UrlListError, match="does not exist"):
        ingest(IngestConfig(url_list=tmp_path / "nope.csv"), workspace)
    with pytest.raises(UrlListError, match="image_size"):
        IngestConfig(url_list=tmp_path / "x.csv", image_size=100_000)
    with pytest.raises(UrlListError, match="image_size"):
        IngestConfig(url_list=tmp_path / "x.csv", image_size=0)


def test_csv_with_custom_columns(tmp_path, faulty_source, workspace):
    rows = pq.read_table(faulty_source.url_list).slice(0, 4)
    table = pa.table({"link": rows["url"], "text": rows["caption"]})
    path = tmp_path / "list.csv"
    pacsv.write_csv(table, path)
    cfg = IngestConfig(
        url_list=path,
        url_col="link",
        caption_col="text",
        allowed_hosts=(faulty_source.base_url.removeprefix("http://"),),
    )
    manifest = ingest(cfg, workspace)
    assert manifest.attempted == 4
    assert set(read_raw_index(workspace.raw)["pair_id"].to_pylist()) == set(
        pq.read_table(faulty_source.truth).slice(0, 4)["pair_id"].to_pylist()
    )


# ---------------------------------------------------------------------------- concurrency


def test_two_ingests_at_once_lose_nothing(faulty_source, tmp_path, workspace):
    """A second ingest into a workspace that one is writing stops with one line naming the
    first; the first's rows land, and the second, run again, adds its own."""
    import subprocess
    import sys
    import time
    from http.server import BaseHTTPRequestHandler

    from tasks.runtime.httpserver import LoopbackHTTPServer, serving
    from tasks.store.workspace import WorkspaceBusyError

    image = _png_bytes()

    # images of a second each, after img2dataset's start of a few seconds: the first run
    # holds the lock well past the second's attempt, which fails at once
    slow = 3

    class Slow(BaseHTTPRequestHandler):  # every image takes a second: the first run is slow
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            time.sleep(1.0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

    with serving(LoopbackHTTPServer(("127.0.0.1", 0), Slow), "test-origin") as server:
        slow_host = f"127.0.0.1:{server.server_address[1]}"
        first, second = tmp_path / "first.parquet", tmp_path / "second.parquet"
        urls = [f"http://{slow_host}/{k}.png" for k in range(slow)]
        pq.write_table(
            pa.table({"url": urls, "caption": [f"slow {k}" for k in range(slow)]}), first
        )
        pq.write_table(pq.read_table(faulty_source.url_list).slice(0, 10), second)
        script = (
            "import sys; from pathlib import Path; from tasks.ingest.download import IngestConfig, ingest; "
            "from tasks.store.workspace import Workspace; "
            f"ingest(IngestConfig(url_list=Path({str(first)!r}), allowed_hosts=({slow_host!r},), "
            f"processes=1, threads=1), Workspace(Path({str(workspace.root)!r})))"
        )
        running = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lock = workspace.root / ".locks" / "raw.lock"
            deadline = time.time() + 60
            while time.time() < deadline and not (lock.exists() and lock.read_text()):
                time.sleep(0.05)
            with pytest.raises(WorkspaceBusyError) as busy:
                ingest(_config(faulty_source, url_list=second), workspace)
            assert running.poll() is None, "the first ingest ended before the second started"
        finally:
            assert running.wait(timeout=300) == 0, running.stderr.read()[-2000:]
    assert f"pid {running.pid}" in str(busy.value) and "\n" not in str(busy.value)
    assert len(_rows(workspace)) == slow
    ingest(_config(faulty_source, url_list=second), workspace)
    assert len(_rows(workspace)) == slow + 10


def _png_bytes() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()
