"""infra/ checked offline (no Docker engine and no cluster here):

- infra/Dockerfile read instruction by instruction: the stages, their bases, the user, the
  pins, the FID weights, telemetry; infra/entrypoint.sh run with stub programs;
- infra/compose.yaml resolved by Debian's docker-compose (`docker-compose config`, which
  validates it against the compose schema), then its services, ports and wiring checked;
  the PostgreSQL init script run against a throwaway cluster;
- infra/k8s/base-job-template.json accepted by the Prefect server's schema, rendered into
  Job manifests by prefect-kubernetes (as the worker does for a flow run) and validated
  strictly by kubernetes-validate against the Kubernetes API schemas.

Every check is also shown a broken copy, which it must reject.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tasks.settings import OFFLINE_DEFAULTS

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
TELEMETRY_OFF = ("DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "PREFECT_SERVER_ANALYTICS_ENABLED")


def _prefect_yaml_job_variables(name: str) -> dict:
    return yaml.safe_load((INFRA / "prefect.yaml").read_text())["definitions"]["job_variables"][
        name
    ]


# ---------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str  # an image, or an earlier stage's name
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, rest)


def read_dockerfile(text: str) -> tuple[dict[str, str], dict[str, Stage]]:
    """(ARG defaults declared before the first FROM, stages by name in file order).
    Continuation lines are joined; comments and the syntax directive are dropped."""
    logical, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            logical.append(pending + line)
            pending = ""
    global_args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current = None
    for line in logical:
        instruction, _, rest = line.strip().partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            words = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else f"#{len(stages)}"
            current = stages[name] = Stage(name, image)
        elif current is None:
            if instruction == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                global_args[key] = value
        else:
            current.instructions.append((instruction, rest))
    return global_args, stages


def _chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and the stages it is built on, root first."""
    chain = [stages[name]]
    while chain[0].base in stages:
        chain.insert(0, stages[chain[0].base])
    return chain


def _env(chain: list[Stage]) -> dict[str, str]:
    env: dict[str, str] = {}
    for stage in chain:
        for instruction, rest in stage.instructions:
            if instruction == "ENV":
                env.update(word.split("=", 1) for word in shlex.split(rest))
    return env


def _copied_from(stage: Stage) -> set[str]:
    return {
        m[1] for instruction, rest in stage.instructions if (m := re.search(r"--from=(\S+)", rest))
    }


def _all(chain: list[Stage], kind: str) -> list[str]:
    """The arguments of every `kind` instruction (RUN, USER, ...) along the chain."""
    return [
        rest for stage in chain for instruction, rest in stage.instructions if instruction == kind
    ]


def _uid(stages: dict[str, Stage], final: str) -> int | None:
    """The uid of the final stage's USER, from the useradd that created it."""
    chain = _chain(stages, final)
    users = _all(chain, "USER")
    for run in _all(chain, "RUN"):
        if users and (m := re.search(rf"useradd\b.*--uid (\d+)\b.* {re.escape(users[-1])}\b", run)):
            return int(m[1])
    return None


FINAL_STAGES = {"cpu": "python:3.11-slim", "cuda": "nvidia/cuda:"}  # target -> its base image


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile by marble's rules; [] when nothing is."""
    problems = []
    _, stages = read_dockerfile(text)
    for target, base_prefix in FINAL_STAGES.items():
        if target not in stages:
            problems.append(f"no stage {target!r}")
            continue
        chain = _chain(stages, target)
        if not chain[0].base.startswith(base_prefix):
            problems.append(f"{target}: built on {chain[0].base}, not {base_prefix}...")
        users = _all(chain, "USER")
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{target}: runs as root")
        env = _env(chain)
        for key in TELEMETRY_OFF:
            if env.get(key) != OFFLINE_DEFAULTS[key]:
                problems.append(f"{target}: {key} is {env.get(key)!r}, not {OFFLINE_DEFAULTS[key]}")
        if env.get("MARBLE_HOME") != "/marble-home":
            problems.append(f"{target}: MARBLE_HOME is not /marble-home")
        if not any("/marble-home" in volume for volume in _all(chain, "VOLUME")):
            problems.append(f"{target}: no VOLUME /marble-home")
        if not _all(chain, "ENTRYPOINT"):
            problems.append(f"{target}: no ENTRYPOINT")
        built = [_chain(stages, source) for source in _copied_from(chain[-1]) if source in stages]
        if not any(
            "python -m tasks.evaluate.fid_weights" in run for c in built for run in _all(c, "RUN")
        ):
            problems.append(f"{target}: the FID weights are not fetched in its build")
    names = list(stages)
    for position, stage in enumerate(stages.values()):
        for source in _copied_from(stage):
            if source not in names[:position]:
                problems.append(f"{stage.name}: COPY --from={source}, not an earlier stage")
    for stage in stages.values():
        for instruction, rest in stage.instructions:
            if instruction != "RUN":
                continue
            for command in re.split(r"&&|;", rest):
                if "pip install" in command and "-c constraints.txt" not in command:
                    problems.append(f"{stage.name}: pip install without -c constraints.txt")
            if re.search(r"\b(curl|wget)\b[^|;&]*\|\s*(sudo\s+)?(ba|da|z)?sh\b", rest):
                problems.append(f"{stage.name}: pipes a download into a shell")
    return problems


def test_dockerfile_has_cpu_and_cuda_images_non_root_pinned_with_weights():
    text = (INFRA / "Dockerfile").read_text()
    assert dockerfile_problems(text) == []
    _, stages = read_dockerfile(text)
    assert _uid(stages, "cpu") == _uid(stages, "cuda") == 10001
    for pool in ("docker_gpu", "kubernetes_gpu"):  # infra/prefect.yaml's job variables
        pool_env = _prefect_yaml_job_variables(pool)["env"]
        for target in FINAL_STAGES:
            image_env = _env(_chain(stages, target))
            assert {k: image_env[k] for k in pool_env} == pool_env, (pool, target)


BROKEN_DOCKERFILES = {  # a change to the real file (its first or last match) -> the problem
    "root user": ("last", "USER marble\nVOLUME", "USER root\nVOLUME", "cuda: runs as root"),
    "no pin": ("first", "pip install -c constraints.txt '.[scale]'", "pip install '.[scale]'",
               "cpu-build: pip install without -c constraints.txt"),
    "curl | sh": ("first", "WORKDIR /opt/marble\nUSER",
                  "RUN curl -fsSL https://x.invalid/i | sh\nWORKDIR /opt/marble\nUSER",
                  "cpu: pipes a download into a shell"),
    "telemetry on": ("last", "DO_NOT_TRACK=true", "DO_NOT_TRACK=false",
                     "cuda: DO_NOT_TRACK is 'false', not true"),
    "no weights": ("first", "&& /opt/venv/bin/python -m tasks.evaluate.fid_weights", "",
                   "cpu: the FID weights are not fetched in its build"),
    "no cuda stage": ("first", "AS cuda\n", "AS gpu\n", "no stage 'cuda'"),
}  # fmt: skip


@pytest.mark.parametrize("breakage", list(BROKEN_DOCKERFILES))
def test_dockerfile_check_rejects_a_broken_copy(breakage):
    where, old, new, problem = BROKEN_DOCKERFILES[breakage]
    text = (INFRA / "Dockerfile").read_text()
    assert old in text, old
    if where == "first":
        broken = text.replace(old, new, 1)
    else:
        head, _, tail = text.rpartition(old)
        broken = head + new + tail
    assert problem in dockerfile_problems(broken)


def test_dockerignore_keeps_environments_workspaces_and_secrets_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "marble-home", ".git", "infra/.env"} <= ignored


@pytest.mark.parametrize(
    ("args", "runs"),
    [
        (["run", "--n", "200"], "marble run --n 200"),
        (["prefect", "flow-run", "execute"], "prefect flow-run execute"),
        (["mlflow", "server", "--port=5000"], "mlflow server --port=5000"),
        ([], "marble"),
    ],
)
def test_entrypoint_runs_marble_or_the_program_named_first(tmp_path, args, runs):
    for program in ("marble", "prefect", "mlflow"):
        stub = tmp_path / program
        stub.write_text(f'#!/bin/sh\necho "{program} $*"\n')
        stub.chmod(0o755)
    done = subprocess.run(
        ["sh", str(INFRA / "entrypoint.sh"), *args],
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == runs


# ---------------------------------------------------------------------------- compose

DOCKER_COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (`make infra-tools` installs Debian's package)",
)
SERVICES = {"postgres", "s3", "prefect-server", "mlflow", "setup", "worker"}
MARBLE_SERVICES = ("mlflow", "setup", "worker")  # those that run the marble image


def compose_config(tmp_path: Path, *files: Path, settings: str = "") -> subprocess.CompletedProcess:
    """`docker-compose config` of the files with only the settings given (an env file), so
    neither the caller's environment nor an infra/.env changes the result."""
    env_file = tmp_path / "settings.env"
    env_file.write_text(settings)
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    argv = [DOCKER_COMPOSE, "--env-file", str(env_file)]
    for file in files:
        argv += ["-f", str(file)]
    return subprocess.run(
        [*argv, "config"], env={"PATH": os.environ["PATH"], "HOME": str(home)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def resolved(tmp_path: Path, *files: Path, settings: str = "") -> dict:
    done = compose_config(tmp_path, *(files or (INFRA / "compose.yaml",)), settings=settings)
    assert done.returncode == 0, done.stderr
    assert "is not set" not in done.stderr, done.stderr  # every variable has a default
    return yaml.safe_load(done.stdout)


def _url(value: str) -> re.Match:
    match = re.fullmatch(r"(?P<scheme>[\w+]+)://(?:(?P<auth>[^@/]+)@)?(?P<host>[\w.-]+)"
                         r"(?::(?P<port>\d+))?(?P<path>/.*)?", value)  # fmt: skip
    assert match, value
    return match


def _published(service: dict) -> list[str]:
    """Host addresses of the published ports (docker-compose 1.x short syntax)."""
    hosts = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            hosts.append(port.get("host_ip", ""))
        else:
            parts = str(port).split(":")
            hosts.append(parts[0] if len(parts) == 3 else "")
    return hosts


@needs_compose
def test_compose_file_resolves_and_wires_the_services(tmp_path):
    config = resolved(tmp_path)
    services = config["services"]
    assert set(services) == SERVICES

    for name, service in services.items():  # published on the loopback only
        assert all(host == "127.0.0.1" for host in _published(service)), (name, service["ports"])
    assert {n for n, s in services.items() if s.get("ports")} == {"s3", "prefect-server", "mlflow"}

    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:15")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    mounts = {v.split(":")[1]: v.split(":")[0] for v in postgres["volumes"]}
    assert "/var/lib/postgresql/data" in mounts
    assert Path(mounts["/docker-entrypoint-initdb.d"]) == INFRA / "postgres-init"
    pg_env = postgres["environment"]
    prefect_db, mlflow_db = pg_env["POSTGRES_DB"], pg_env["MLFLOW_DB"]
    assert prefect_db != mlflow_db  # both keep an alembic_version table

    server = services["prefect-server"]
    db_url = _url(server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (db_url["scheme"], db_url["host"], db_url["path"]) == (
        "postgresql+asyncpg", "postgres", f"/{prefect_db}")  # fmt: skip
    assert db_url["auth"] == f"{pg_env['POSTGRES_USER']}:{pg_env['POSTGRES_PASSWORD']}"
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    server_port = server["command"][server["command"].index("--port") + 1]

    mlflow = services["mlflow"]
    store = _url(mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"])
    assert (store["scheme"], store["host"]) == ("postgresql+psycopg2", "postgres")
    assert store["path"] == f"/{mlflow_db}"
    assert "--serve-artifacts" in mlflow["command"]
    (destination,) = [a for a in mlflow["command"] if a.startswith("--artifacts-destination=")]
    worker_env = services["worker"]["environment"]
    assert destination.startswith(f"--artifacts-destination=s3://{worker_env['MLFLOW_BUCKET']}/")
    assert _url(mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"])["host"] == "s3"
    mlflow_port = next(a.split("=")[1] for a in mlflow["command"] if a.startswith("--port="))
    # marble's experiments, made through the server, keep their artifacts in S3 too
    assert "volumes" not in mlflow

    worker = services["worker"]
    assert worker["command"][:3] == ["prefect", "worker", "start"]
    assert worker["command"][worker["command"].index("--pool") + 1] == worker_env["MARBLE_POOL"]
    api = _url(worker_env["PREFECT_API_URL"])
    assert (api["host"], api["port"], api["path"]) == ("prefect-server", server_port, "/api")
    tracking = _url(worker_env["MLFLOW_TRACKING_URI"])
    assert (tracking["host"], tracking["port"]) == ("mlflow", mlflow_port)
    assert worker["depends_on"]["setup"]["condition"] == "service_completed_successfully"
    assert any(v.endswith(f":{worker_env['MARBLE_HOME']}:rw") for v in worker["volumes"])
    docker_pool = _prefect_yaml_job_variables("docker_gpu")
    assert worker_env["MARBLE_HOME"] == docker_pool["env"]["MARBLE_HOME"]

    setup = services["setup"]
    assert setup["command"] == ["sh", "infra/compose-setup.sh"]
    assert setup["environment"] == worker_env
    script = (INFRA / "compose-setup.sh").read_text()
    assert 'work-pool create "$MARBLE_POOL" --type process' in script
    assert "prefect --no-prompt deploy --all --prefect-file infra/prefect.yaml" in script
    assert {services[n]["image"] for n in MARBLE_SERVICES} == {"marble:cpu"}
    for name in (*MARBLE_SERVICES, "prefect-server"):
        env = services[name]["environment"]
        for key in TELEMETRY_OFF:
            assert env.get(key) == OFFLINE_DEFAULTS[key], (name, key)


@needs_compose
def test_compose_settings_come_from_the_environment(tmp_path):
    settings = "PREFECT_HOST_PORT=14200\nPOSTGRES_PASSWORD=not-the-default\nMARBLE_POOL=gpu-pool\n"
    services = resolved(tmp_path, settings=settings)["services"]
    assert "127.0.0.1:14200:4200/tcp" in services["prefect-server"]["ports"]
    assert services["prefect-server"]["environment"]["PREFECT_UI_API_URL"] == (
        "http://127.0.0.1:14200/api")  # fmt: skip
    store = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert ":not-the-default@postgres:" in store
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "not-the-default"
    assert "gpu-pool" in services["worker"]["command"]
    assert services["setup"]["environment"]["MARBLE_POOL"] == "gpu-pool"


@needs_compose
def test_compose_gpu_override_gives_the_worker_a_gpu(tmp_path):
    services = resolved(tmp_path, INFRA / "compose.yaml", INFRA / "compose.gpu.yaml")["services"]
    worker = services["worker"]
    assert worker["image"] == _prefect_yaml_job_variables("docker_gpu")["image"] == "marble:cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert str(device["count"]) == worker["environment"]["MARBLE_GPUS"]
    assert services["mlflow"]["image"] == "marble:cpu"  # only the worker needs the GPU image


BROKEN_COMPOSE = {  # a change to infra/compose.yaml -> what docker-compose must say
    "unknown option": ("    shm_size: ${WORKER_SHM_SIZE:-2gb}", "    shm_sise: 2gb", "shm_sise"),
    "undefined service": ("      s3:\n        condition", "      s4:\n        condition", "s4"),
    "bad condition": ("condition: service_completed_successfully", "condition: service_done",
                      "service_done"),
    "image not a string": ("image: ${POSTGRES_IMAGE:-postgres:15-bookworm}", "image: [postgres]",
                           "services.postgres.image"),
}  # fmt: skip


@needs_compose
@pytest.mark.parametrize("breakage", list(BROKEN_COMPOSE))
def test_compose_check_rejects_a_broken_copy(tmp_path, breakage):
    old, new, named = BROKEN_COMPOSE[breakage]
    text = (INFRA / "compose.yaml").read_text()
    assert old in text
    broken = tmp_path / "infra" / "compose.yaml"
    broken.parent.mkdir()
    broken.write_text(text.replace(old, new, 1))
    done = compose_config(tmp_path, broken)
    assert done.returncode != 0
    assert named in done.stderr, done.stderr


VARIABLE = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def test_compose_example_settings_list_every_variable_with_its_default():
    example = {}
    for line in (INFRA / "compose.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            example[key] = value
    defaults = {}
    for m in VARIABLE.finditer((INFRA / "compose.yaml").read_text()):
        assert m[2] is not None, f"${{{m[1]}}} has no default"
        assert defaults.setdefault(m[1], m[2]) == m[2], f"{m[1]} has two defaults"
    gpu_variables = {m[1] for m in VARIABLE.finditer((INFRA / "compose.gpu.yaml").read_text())}
    assert set(example) == set(defaults) | gpu_variables
    assert {k: example[k] for k in defaults} == defaults
    for key, value in example.items():  # secrets: only development defaults are written down
        if re.search("PASSWORD|SECRET|KEY", key):
            assert "dev" in value, (key, value)


# ---------------------------------------------------------------------------- PostgreSQL init


def test_postgres_init_script_creates_the_mlflow_database():  # ~1 s: initdb, start, stop
    from tests.postgres_helpers import postgres_bin, throwaway_cluster, unavailable_reason

    if reason := unavailable_reason():
        pytest.skip(reason)
    script = INFRA / "postgres-init" / "10-mlflow-database.sql"
    with throwaway_cluster() as cluster:

        def psql(env: dict) -> subprocess.CompletedProcess:  # as the postgres image runs it
            argv = [str(postgres_bin() / "psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc",
                    "-h", str(cluster.folder), "-p", str(cluster.port), "-U", "postgres",
                    "-d", "postgres", "-f", str(script)]  # fmt: skip
            return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

        before = cluster.databases()
        done = psql({"PATH": os.environ["PATH"]})  # no MLFLOW_DB: refused, nothing created
        assert done.returncode != 0 and cluster.databases() == before
        done = psql({"PATH": os.environ["PATH"], "MLFLOW_DB": "mlflow-runs"})
        assert done.returncode == 0, done.stderr
        assert cluster.databases() == before | {"mlflow-runs"}


# ---------------------------------------------------------------------------- Kubernetes

K8S_TEMPLATE = json.loads((INFRA / "k8s" / "base-job-template.json").read_text())
K8S_VERSIONS = ("1.30", "1.37")  # an older and the newest schema kubernetes-validate has


class _NoApi:
    """Stands in for the Prefect client: the template names no blocks or variables, so
    rendering never needs the API; if it did, this fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"rendering the template called the Prefect API ({name})")


def check_job_variables(values: dict) -> None:
    """What the Prefect server checks when a deployment sets job variables."""
    from prefect.utilities.schema_tools import validate

    validate(values, K8S_TEMPLATE["variables"], raise_on_error=True, ignore_required=True,
             allow_none_with_default=True)  # fmt: skip


def render(template: dict, values: dict) -> dict:
    """The Job manifest the Kubernetes worker would submit for a flow run with these job
    variables, with the name the API server would give it (from generateName)."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    configuration = asyncio.run(
        KubernetesWorkerJobConfiguration.from_template_and_values(template, values, client=_NoApi())
    )
    configuration.prepare_for_flow_run(
        FlowRun(id=uuid.uuid4(), name="calm-marble", flow_id=uuid.uuid4())
    )
    manifest = copy.deepcopy(configuration.job_manifest)
    manifest["metadata"]["name"] = manifest["metadata"]["generateName"] + "x7k2p"
    return manifest


def validate_strict(manifest: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(manifest, version, strict=True)


def _container(manifest: dict) -> dict:
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    return container


def test_k8s_template_is_accepted_by_the_prefect_server():
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect.utilities.schema_tools import is_valid_schema

    WorkPoolCreate(name="marble-k8s", type="kubernetes", base_job_template=K8S_TEMPLATE)
    is_valid_schema(K8S_TEMPLATE["variables"], preprocess=False)
    used = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", json.dumps(K8S_TEMPLATE["job_configuration"])))
    assert used == set(K8S_TEMPLATE["variables"]["properties"])  # none missing, none unused


K8S_VALUES = {
    "defaults": {},
    "infra/prefect.yaml kubernetes_gpu": _prefect_yaml_job_variables("kubernetes_gpu"),
    "cpu job, sized": {
        "gpus": 0, "image": "registry.example.com/marble:cpu", "cpu_request": "4",
        "cpu_limit": "8", "memory_request": "16Gi", "memory_limit": "32Gi", "tolerations": [],
        "node_selector": {"node.kubernetes.io/instance-type": "c7i.4xlarge"},
        "service_account_name": "marble-runner", "active_deadline_seconds": 7200,
        "env": {"MLFLOW_TRACKING_URI": "http://mlflow.marble:5000"}, "name": "nightly",
    },
    "two gpus": {"gpus": 2, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                 "shm_size": "32Gi", "finished_job_ttl": None},
}  # fmt: skip


@pytest.mark.parametrize("case", list(K8S_VALUES))
def test_k8s_template_renders_strictly_valid_jobs_with_the_gpu_limit(case):
    values = K8S_VALUES[case]
    check_job_variables(values)
    manifest = render(K8S_TEMPLATE, values)
    for version in K8S_VERSIONS:
        validate_strict(manifest, version)

    defaults = {k: v.get("default") for k, v in K8S_TEMPLATE["variables"]["properties"].items()}
    expected = defaults | values
    container, pod = _container(manifest), manifest["spec"]["template"]["spec"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == expected["gpus"]
    assert container["image"] == expected["image"]
    assert manifest["metadata"]["namespace"] == expected["namespace"]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MARBLE_HOME"] == "/marble-home"
    assert {"name": "marble-home", "mountPath": env["MARBLE_HOME"]} in container["volumeMounts"]
    claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [{"claimName": expected["pvc"]}]
    assert pod["tolerations"] == expected["tolerations"]
    assert pod["nodeSelector"] == expected["node_selector"]
    assert pod.get("serviceAccountName") == expected["service_account_name"]
    _, stages = read_dockerfile((INFRA / "Dockerfile").read_text())
    assert pod["securityContext"]["runAsUser"] == _uid(stages, "cuda")  # the image's user
    assert pod["securityContext"]["runAsNonRoot"] is True
    for key, value in values.get("env", {}).items():
        assert env[key] == value


def test_k8s_prefect_default_template_fails_strict_validation():
    """Why marble ships its own template: Prefect's default puts `completions` and
    `parallelism` in the pod spec, which the Kubernetes API does not define there."""
    import kubernetes_validate
    from prefect_kubernetes.worker import KubernetesWorker

    manifest = render(KubernetesWorker.get_default_base_job_template(), {})
    with pytest.raises(kubernetes_validate.ValidationError, match="completions"):
        validate_strict(manifest, K8S_VERSIONS[-1])


BROKEN_MANIFESTS = {  # a change to a rendered manifest -> what the validator must name
    "misspelt field": (lambda m: _container(m).__setitem__("volumeMount", []), "volumeMount"),
    "limit not a quantity": (
        lambda m: _container(m)["resources"]["limits"].__setitem__("nvidia.com/gpu", ["1"]),
        "nvidia.com/gpu",
    ),
    "pod field at the job level": (lambda m: m["spec"].__setitem__("restartPolicy", "Never"),
                                   "restartPolicy"),
}  # fmt: skip


@pytest.mark.parametrize("breakage", list(BROKEN_MANIFESTS))
def test_k8s_validation_rejects_a_broken_manifest(breakage):
    import kubernetes_validate

    change, named = BROKEN_MANIFESTS[breakage]
    manifest = render(K8S_TEMPLATE, {})
    change(manifest)
    with pytest.raises(kubernetes_validate.ValidationError) as error:
        validate_strict(manifest, K8S_VERSIONS[-1])
    assert named in str(error.value).split("\n")[0] + str(error.value.path)


@pytest.mark.parametrize(
    "values", [{"gpus": -1}, {"image_pull_policy": "Sometimes"}, {"gpus": "two"}]
)
def test_k8s_job_variables_out_of_the_schema_are_refused(values):
    from prefect.utilities.schema_tools import ValidationError

    with pytest.raises(ValidationError, match=next(iter(values))):
        check_job_variables(values)


def test_k8s_template_keeps_completions_and_parallelism_at_the_job_level():
    """The Job API defines them there. prefect-kubernetes checks a template against a base
    manifest that has them in the pod spec; its JSON-patch diff accepts them at the job
    level (a move, not a missing field) but not their absence."""
    spec = K8S_TEMPLATE["job_configuration"]["job_manifest"]["spec"]
    assert (spec["completions"], spec["parallelism"]) == (1, 1)
    stripped = copy.deepcopy(K8S_TEMPLATE)
    for key in ("completions", "parallelism"):
        del stripped["job_configuration"]["job_manifest"]["spec"][key]
    with pytest.raises(ValueError, match="missing required attributes"):
        render(stripped, {})


def test_k8s_namespace_manifests_are_valid_and_match_the_template():
    documents = list(yaml.safe_load_all((INFRA / "k8s" / "marble-namespace.yaml").read_text()))
    for document in documents:
        for version in K8S_VERSIONS:
            validate_strict(document, version)
    by_kind = {d["kind"]: d for d in documents}
    defaults = K8S_TEMPLATE["variables"]["properties"]
    assert by_kind["Namespace"]["metadata"]["name"] == defaults["namespace"]["default"]
    claim = by_kind["PersistentVolumeClaim"]
    assert claim["metadata"]["name"] == defaults["pvc"]["default"]
    assert claim["metadata"]["namespace"] == defaults["namespace"]["default"]
    assert _prefect_yaml_job_variables("kubernetes_gpu")["pvc"] == defaults["pvc"]["default"]
