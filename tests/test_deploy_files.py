"""deploy/: the Dockerfile, the compose file and the Kubernetes sketch say what the app accepts.

No docker daemon or cluster runs here, so these read the files (PyYAML) and hold them to the
app itself: every WHISPER_APP_* variable is a setting and its value loads (engine/settings.py),
every replica reserves a GPU of its own and reaches the database the file starts, and the
probes ask for routes the app really serves, answered 200 by an app built from ui.routes.
"""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi import FastAPI
from fastapi.testclient import TestClient

from conftest import ROOT, fast_settings
from engine import Engine, Settings, load_settings
from engine.settings import ENV_PREFIX
from ui.routes import add_routes

DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes.yaml"


def interpolated(value: str) -> str:
    """Compose's `${NAME:-default}` as compose reads it with NAME unset: the default."""
    return re.sub(r"\$\{[A-Z0-9_]+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", str(value))


def settings_from(environment: dict[str, str]) -> Settings:
    """The settings a container with this environment starts with (the image's config.yaml,
    then WHISPER_APP_*), as app.py loads them; a misspelt key or a bad value raises."""
    unknown = [
        name
        for name in environment
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    ]
    assert not unknown, f"not settings (engine/settings.py): {unknown}"
    return load_settings(ROOT / "config.yaml", environ=environment)


def compose_replicas(services: dict) -> dict[str, dict]:
    return {
        name: service
        for name, service in services.items()
        if f"{ENV_PREFIX}JOB_STORE" in (service.get("environment") or {})
    }


def test_compose_replicas_share_the_database_and_reserve_a_gpu_each():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    db = services["db"]
    assert db["image"].startswith("postgres:") and "test" in db["healthcheck"]
    data_volume = next(v.split(":")[0] for v in db["volumes"] if v.endswith(":/var/lib/postgresql/data"))
    assert data_volume in compose["volumes"], "the database keeps its files in a named volume"

    replicas = compose_replicas(services)
    assert len(replicas) >= 2
    gpus = []
    for name, service in replicas.items():
        environment = {k: interpolated(v) for k, v in service["environment"].items()}
        settings = settings_from(environment)
        url = urlsplit(settings.job_store)
        db_env = {k: interpolated(v) for k, v in db["environment"].items()}
        assert (url.hostname, url.port or 5432, url.path.strip("/")) == ("db", 5432, db_env["POSTGRES_DB"])
        assert (url.username, url.password) == (db_env["POSTGRES_USER"], db_env["POSTGRES_PASSWORD"])
        assert settings.host == "0.0.0.0", f"{name} must serve beyond its container"
        assert service["depends_on"]["db"]["condition"] == "service_healthy"

        reservations = service["deploy"]["resources"]["reservations"]["devices"]
        gpu = [d for d in reservations if "gpu" in d["capabilities"]]
        assert len(gpu) == 1 and len(gpu[0]["device_ids"]) == 1, f"{name} reserves one GPU"
        gpus += gpu[0]["device_ids"]

        # One model cache for all, where the settings download to.
        assert f"models:{settings.download_root}" in service["volumes"]
        assert (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert len(set(gpus)) == len(gpus), f"every replica its own GPU: {gpus}"
    assert "models" in compose["volumes"]


def test_compose_fetches_the_model_once_before_the_replicas():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    model = services["model"]
    assert (ROOT / model["command"][-1]).is_file()
    for name, service in compose_replicas(services).items():
        assert service["depends_on"]["model"]["condition"] == "service_completed_successfully"
        environment = {k: interpolated(v) for k, v in service["environment"].items()}
        fetched = settings_from({k: interpolated(v) for k, v in model["environment"].items()})
        assert (fetched.model, fetched.download_root) == (
            settings_from(environment).model,
            settings_from(environment).download_root,
        ), f"{name} loads the model the model service fetched, from the same folder"


def test_compose_proxy_sends_each_client_to_one_replica():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    mount = next(v for v in services["proxy"]["volumes"] if v.startswith("./nginx.conf:"))
    nginx = (COMPOSE.parent / mount.split(":")[0]).read_text()
    upstream = re.search(r"upstream \w+ \{(.*?)\}", nginx, re.S).group(1)
    assert "ip_hash;" in upstream, "sticky sessions for the Gradio page"
    for name, service in compose_replicas(services).items():
        port = settings_from({k: interpolated(v) for k, v in service["environment"].items()}).port
        assert f"server {name}:{port};" in upstream
    assert "proxy_buffering off;" in nginx, "server-sent events must not wait in nginx's buffer"


def kubernetes_documents() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(KUBERNETES.read_text()) if doc}


def test_kubernetes_pods_take_one_gpu_and_their_settings_from_the_secret():
    docs = kubernetes_documents()
    deployment, secret = docs["Deployment"], docs["Secret"]
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    environment = {}
    for variable in container["env"]:
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"]
            environment[variable["name"]] = secret["stringData"][ref["key"]]  # the key exists
        else:
            environment[variable["name"]] = variable["value"]
    settings = settings_from(environment)
    assert settings.job_store.startswith("postgresql://") and settings.host == "0.0.0.0"
    assert f"{ENV_PREFIX}JOB_STORE" in {v["name"] for v in container["env"] if "valueFrom" in v}

    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert ports[container[probe]["httpGet"]["port"]] == settings.port
    (fetch,) = pod["spec"]["initContainers"]
    assert (ROOT / fetch["command"][-1]).is_file()

    service = docs["Service"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["sessionAffinity"] == "ClientIP", "sticky sessions for the Gradio page"
    assert service["spec"]["ports"][0]["targetPort"] in ports


def test_probes_ask_for_routes_the_app_serves(micro_checkpoint, tmp_path):
    container = kubernetes_documents()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    readiness, liveness = (container[p]["httpGet"]["path"] for p in ("readinessProbe", "livenessProbe"))
    assert (readiness, liveness) == ("/healthz", "/livez")
    replicas = compose_replicas(yaml.safe_load(COMPOSE.read_text())["services"])
    checks = {
        re.search(r"127\.0\.0\.1:\d+(/\w+)", " ".join(s["healthcheck"]["test"])).group(1)
        for s in replicas.values()
    }

    engine = Engine(fast_settings(micro_checkpoint, data_dir=str(tmp_path / "data")), background=True)
    app = FastAPI()
    add_routes(app, engine, engine.settings)
    try:
        client = TestClient(app)
        deadline = time.monotonic() + 60
        while engine.status().model.state != "ready":
            assert time.monotonic() < deadline, engine.status().model
            time.sleep(0.05)
        for path in {readiness, liveness, *checks}:  # 404 for a path that is not a route
            assert client.get(path).status_code == 200, path
        assert client.get(readiness).json()["status"] == "ok", "the readiness probe reads /healthz's answer"
    finally:
        app.state.jobs.close()
        engine.close()


def readme_install_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- run-command -->")[1].split("<!-- /run-command -->")[0]
    command = block.strip().removeprefix("```bash").removesuffix("```").strip()
    return command.removesuffix("&& python app.py").strip()


def test_dockerfile_installs_as_the_readme_says():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    assert re.search(r"apt-get install .*ffmpeg", dockerfile)
    install = readme_install_command()
    assert install.startswith("pip install -r requirements.txt")
    # the README's command, with pip's --no-cache-dir (no wheel cache left in the image)
    assert install.replace("pip install", "pip install --no-cache-dir") in dockerfile
    assert f"EXPOSE {Settings.model_fields['port'].default}" in dockerfile
    assert re.search(r'^CMD \["python", "app.py"\]$', dockerfile, re.M)


@pytest.mark.parametrize("path", [COMPOSE, KUBERNETES])
def test_deploy_files_say_they_are_untested_here(path):
    """Nothing here ran them against docker or a cluster; the files and the README say so."""
    assert "Untested" in path.read_text()
    section = (
        (ROOT / "README.md").read_text().split("## Several GPUs and several machines")[1].split("\n## ")[0]
    )
    assert "untested here" in section.lower() and path.name in section
