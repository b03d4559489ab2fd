"""Install hygiene: the dataclasses backport stays out, telemetry is off, the CLI lists its commands."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from tasks.settings import OFFLINE_DEFAULTS, uses_glibc


def test_dataclasses_backport_is_not_installed():
    # img2dataset depends on `dataclasses` 0.6, whose dataclasses.py shadows the standard
    # library in Prefect's server process ("unexpected keyword argument 'slots'").
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("dataclasses")
    import dataclasses

    assert "site-packages" not in dataclasses.__file__


def test_telemetry_switches_are_set_on_import():
    """In a process whose environment has none of the switches (the Makefile exports them,
    so this one must not inherit them), importing the package turns each one on, and a
    value the user set wins."""
    script = (
        "import os, json, tasks\n"
        "from tasks.settings import OFFLINE_DEFAULTS\n"
        "print(json.dumps({k: os.environ.get(k) for k in OFFLINE_DEFAULTS}))"
    )
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_DEFAULTS}
    env["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = "7"  # set by the user
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    seen = json.loads(out)
    assert seen["DO_NOT_TRACK"] == "true"
    assert seen["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert seen["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert seen["NO_ALBUMENTATIONS_UPDATE"] == "1"
    assert seen["HF_HUB_OFFLINE"] == "1"
    assert seen["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] == "7"


# A process that allocates and frees 64 MiB (16,384 pages) ten times, then prints its minor
# page faults over the loop (malloc, then every byte written, as torch's CPU tensors are).
_REALLOCATE = (
    "import resource{imports}\n"
    "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(10):\n    len(b'x' * (64 << 20))\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"
)


@pytest.mark.skipif(not uses_glibc(), reason="glibc's malloc")
def test_freed_memory_is_kept_for_the_next_allocation():
    """Importing the package sets glibc's mmap and trim thresholds in the process and in the
    environment its children inherit, and a value the user set wins. Measured by page faults:
    without the thresholds each 64 MiB block is mapped and faulted in anew (10 x 16,384);
    with them only the first is."""
    from tasks.settings import MALLOC_DEFAULTS

    env = {k: v for k, v in os.environ.items() if k not in MALLOC_DEFAULTS}

    def faults(imports: str, **extra: str) -> int:
        script = _REALLOCATE.format(imports=imports)
        out = subprocess.run(
            [sys.executable, "-c", script], env=env | extra, capture_output=True, text=True,
            check=True,
        ).stdout  # fmt: skip
        return int(out)

    assert faults("") > 10 * 16_384
    assert faults(", tasks") < 2 * 16_384
    child = "import os, json, tasks\nfrom tasks.settings import MALLOC_DEFAULTS\n"
    child += "print(json.dumps({k: os.environ.get(k) for k in MALLOC_DEFAULTS}))"
    seen = subprocess.run(
        [sys.executable, "-c", child], env=env | {"MALLOC_TRIM_THRESHOLD_": "65536"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(seen) == {
        "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
        "MALLOC_TRIM_THRESHOLD_": "65536",  # set by the user
    }
    # a process started with them in its environment, as the package's children are, faults
    # only once too: glibc reads them as it starts
    assert faults("", **{k: str(v) for k, v in MALLOC_DEFAULTS.items()}) < 2 * 16_384


def test_cli_lists_every_subcommand(capsys):
    from flows.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "ingest", "filter", "train", "shapes"):
        assert f"    {command} " in out


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    from flows.cli import main

    bad = tmp_path / "list.csv"
    bad.write_text("link,text\nhttp://a/b.png,c\n")
    assert main(["--home", str(tmp_path / "h"), "ingest", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("marble: error:") and "columns found: link, text" in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "diffusion", "--steps", "0"],
            "steps: Input should be greater than or equal to 1",
        ),
        (["train", "diffusion", "--batch-size", "0"], "batch-size: Input should be greater than"),
        (["run", "--diffusion-steps", "0"], "diffusion-steps: Input should be greater than"),
        (["filter", "--top-fraction", "2"], "top-fraction: Input should be less than or equal"),
    ],
)
def test_cli_values_out_of_bounds_are_refused_by_the_parameter_models(argv, message, capsys):
    from flows.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("marble: error: ") and message in err and err.count("\n") == 1


def test_cli_choices_come_from_the_preset_tables(capsys):
    from flows.cli import main
    from models.unet import UNET_PRESETS

    with pytest.raises(SystemExit):
        main(["train", "diffusion", "--unet", "unet-xxl"])
    err = capsys.readouterr().err
    assert "invalid choice: 'unet-xxl'" in err and all(name in err for name in UNET_PRESETS)
