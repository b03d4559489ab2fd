"""Run img2dataset with keyword arguments read from a JSON file.

    python -m tasks.ingest.img2dataset_run ARGS.json [--spark-master MASTER]

Ingest downloads in a process of its own (this one), started with an environment that sends
every fetch through the vetting proxy (tasks/ingest/fetch_proxy.py); img2dataset's workers inherit
it. marble's own process, and its own HTTP clients, keep their environment.

With the pyspark distributor this process is Spark's driver: it starts a SparkSession on
MASTER (img2dataset uses the active one), bound to 127.0.0.1 with the web UI off, and stops
it, JVM included, before it exits. The JVM inherits this process's environment, and Spark's
Python workers inherit the JVM's, so the proxy applies to them too; it is also set as
executor environment, so that executors elsewhere fail closed (they cannot reach the proxy
on the driver's loopback) rather than fetch unvetted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

JVM_EXIT_TIMEOUT_S = 30.0

# Neither this process nor its download workers (spawned: each runs this module first, as
# __mp_main__) use torch. img2dataset's writers import webdataset, which takes torch when it
# is installed (2 of img2dataset's 3.5 s of import here) and its own stand-ins when it is
# not; marked missing, it is not loaded. Only where this module is the program: imported
# anywhere else, it leaves that process's torch alone. Spark's Python workers do not run it.
if __name__ in ("__main__", "__mp_main__"):
    sys.modules.setdefault("torch", None)


def spark_session(master: str, processes: int, scratch: Path):
    """A SparkSession on `master` that touches nothing but loopback and `scratch`."""
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers run in this venv
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["SPARK_LOCAL_DIRS"] = str(scratch / "local")  # shuffle and scratch files
    from pyspark.sql import SparkSession

    from tasks.ingest.fetch_proxy import PROXY_VARIABLES

    builder = (
        SparkSession.builder.master(master)
        .appName("marble-ingest")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.warehouse.dir", str(scratch / "warehouse"))
        .config("spark.default.parallelism", str(processes))
    )
    for name in (*PROXY_VARIABLES, "OPENCV_IO_MAX_IMAGE_PIXELS"):
        if name in os.environ:
            builder = builder.config(f"spark.executorEnv.{name}", os.environ[name])
    return builder.getOrCreate()


def stop_spark(spark) -> None:
    """Stop the session and end its JVM now (it would end when this process does, as its
    stdin closes; closing it here makes the end explicit and waited for)."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    spark.stop()
    if gateway is None or gateway.proc is None:
        return
    gateway.shutdown()
    gateway.proc.stdin.close()  # the JVM exits at end of file on its stdin
    try:
        gateway.proc.wait(timeout=JVM_EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        gateway.proc.kill()
        gateway.proc.wait()
    print(f"spark: session stopped, JVM pid {gateway.proc.pid} ended", flush=True)


def main(args_path: str, spark_master: str | None = None) -> None:
    import img2dataset  # heavy (wandb, albumentations, cv2)

    arguments = json.loads(Path(args_path).read_text())
    if arguments.get("distributor") != "pyspark":
        img2dataset.download(**arguments)
        return
    master = spark_master or f"local[{arguments['processes_count']}]"
    spark = spark_session(master, arguments["processes_count"], Path(args_path).parent / "spark")
    try:
        from pyspark import SparkContext

        pid = SparkContext._gateway.proc.pid if SparkContext._gateway.proc else "?"
        print(f"spark: session on {master}, JVM pid {pid}", flush=True)
        img2dataset.download(**arguments)
    finally:
        stop_spark(spark)


if __name__ == "__main__":  # img2dataset's workers are spawned: they import this module
    parser = argparse.ArgumentParser(prog="python -m tasks.ingest.img2dataset_run")
    parser.add_argument("args_path", help="JSON file of img2dataset.download's arguments")
    parser.add_argument("--spark-master", help="Spark master (pyspark distributor only)")
    options = parser.parse_args()
    main(options.args_path, options.spark_master)
