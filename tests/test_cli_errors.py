"""Every command, given bad input, fails with one line on stderr and exit status 2, and
leaves the workspace's data byte-identical."""

from __future__ import annotations

import contextlib
import hashlib
import io

import pytest

from flows.cli import main
from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard
from tasks.store.workspace import Workspace

# The commands run in this process; those whose error is found inside a flow report to the
# session's Prefect server rather than start a temporary one (about 8 s).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    workspace = Workspace(root / "home")
    workspace.raw.mkdir(parents=True)
    write_as_raw_shard(
        ShapesSpec(n=40, faults=FaultRates.uniform(0)), workspace.raw / "00000.parquet"
    )
    (root / "cols.csv").write_text("link,text\nhttp://a/b.png,c\n")
    (root / "latin1.csv").write_bytes("url,caption\nhttp://a/b.png,caf\xe9\n".encode("latin-1"))
    (root / "ok.csv").write_text("url,caption\nhttp://a/b.png,c\n")
    (root / "a-file").write_text("not a folder")
    return root, workspace


CASES = [
    (["ingest", "{root}/missing.csv"], "does not exist or is not a file"),
    (["ingest", "{root}/cols.csv"], "columns found: link, text"),
    (["ingest", "{root}/latin1.csv"], "is not valid UTF-8"),
    (["ingest", "{root}/ok.csv", "--image-size", "0"], "image-size: Input should be greater"),
    (["ingest", "{root}/ok.csv", "--processes", "-1"], "processes: Input should be greater"),
    (["ingest", "{root}/ok.csv", "--allow-host", "nonsense"], "is not HOST:PORT"),
    (["ingest", "{root}/ok.csv", "--max-pixels", "0"], "max-pixels: Input should be greater"),
    (["filter", "--model", "ViT-B-32"], "must be named openclip:ARCH:TAG or marble:NAME"),
    (["filter", "--model", "marble:nope"], "no clip checkpoint 'nope'"),
    (["filter", "--top-fraction", "0"], "top-fraction: Input should be greater than 0"),
    (["filter", "--filter-clip-epochs", "-1"], "filter-clip-epochs: Input should be greater"),
    (["train", "diffusion", "--steps", "0"], "steps: Input should be greater than or equal to 1"),
    (["train", "diffusion", "--batch-size", "-4"], "batch-size: Input should be greater"),
    (["train", "diffusion", "--device", "tpu"], "unknown device 'tpu'"),
    (["train", "diffusion", "--device", "cuda:7"], "CUDA device"),
    (["train", "diffusion"], "no autoencoder checkpoint 'kl-f4'"),
    (["train", "clip", "--text-encoder", "clip-xl"], "invalid choice: 'clip-xl'"),
    (["train", "gan"], "invalid choice: 'gan'"),
    (["evaluate", "--num-samples", "1"], "num-samples: Input should be greater than or equal to 2"),
    (["evaluate", "--judge", "marble:clip-tiny"], "no diffusion checkpoints in"),
    (["evaluate", "--guidance-scales", "x"], "invalid float list value: 'x'"),
    (["query", "SELEC 1"], "syntax error"),
    (["query", "SELECT * FROM nowhere"], "views in"),
    (["query", "SELECT 1", "--format", "xml"], "invalid choice: 'xml'"),
    (["run", "--n", "0"], "n: Input should be greater than or equal to 1"),
    (["run", "--port", "70000"], "port: Input should be less than or equal to 65535"),
    (["run", "--unets", "unet-q"], "invalid choice 'unet-q'"),
    (["run", "--diffusion-steps", "-1"], "diffusion-steps: Input should be greater"),
    (["run", "--url-list", "/no/such/list.parquet"], "list.parquet does not exist"),
    (["up", "--timezone", "Mars/Base"], "unknown time zone 'Mars/Base'"),
    (["up", "--nightly-cron", "0 25 * * *"], "not a cron expression"),
    (["shapes", "serve", "--fault-rate", "2"], "fault-rate: Input should be less than"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


# One stderr for every call: Prefect's console handler keeps the stream it first saw, so a
# per-test capture (closed after its test) would break it.
_STDERR = io.StringIO()


def _run(argv: list[str]) -> tuple[int, str]:
    """(exit status, stderr) of the CLI run in this process."""
    _STDERR.seek(0)
    _STDERR.truncate()
    with contextlib.redirect_stderr(_STDERR):
        try:
            status = main(argv)
        except SystemExit as e:  # argparse's own refusals
            status = e.code
    return status, _STDERR.getvalue()


def _snapshot(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input_is_one_line_exit_two_and_nothing_changes(files, argv, message):
    root, workspace = files
    before = _snapshot(workspace.root)
    status, err = _run(["--home", str(workspace.root), *(a.format(root=root) for a in argv)])
    lines = [line for line in err.splitlines() if line.startswith("marble: error:")]
    assert status == 2, err[-2000:]
    assert len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert _snapshot(workspace.root) == before


def test_a_workspace_that_is_a_file_is_refused(files):
    root, _ = files
    message = f"workspace {root / 'a-file'} is a file, not a folder; choose another --home"
    assert _run(["--home", str(root / "a-file"), "query", "SELECT 1"]) == (
        2, f"marble: error: {message}\n"
    )  # fmt: skip


def test_a_corrupt_shard_is_named(tmp_path):
    home = Workspace(tmp_path / "home")
    home.raw.mkdir(parents=True)
    (home.raw / "00000.parquet").write_bytes(b"PAR1 but not really")
    status, err = _run(["--home", str(home.root), "filter", "--filter-clip-steps", "2"])
    assert status == 2
    assert f"{home.raw / '00000.parquet'} is not a readable Parquet shard" in err


def test_a_workspace_that_cannot_be_written_is_named(files):
    root, _ = files
    status, err = _run(["--home", "/proc/self/marble-home", "ingest", str(root / "ok.csv")])
    assert status == 2 and err.count("\n") == 1  # before any stage starts
    assert err.startswith("marble: error: cannot use /proc/") and "marble-home" in err
