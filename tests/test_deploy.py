"""What operators run: the image's build steps, the Kubernetes manifests, the compose file.

No container engine runs on the machines CI uses, so the image's two stages are proved the way
the Dockerfile runs them: the same scripts (``deploy/container/``), in a fresh virtualenv,
then ``relay serve`` from it answering the image's HEALTHCHECK and draining on SIGTERM. The
manifests are checked against Kubernetes' own schemas (offline) and against relay: probes on
the endpoints relay serves, a grace period that covers the drain, the user the image runs as.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import venv
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from relay.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
KUBERNETES = "1.32"


def manifests() -> dict[str, dict[str, Any]]:
    """The kustomization's resources, by kind."""
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            out[doc["kind"]] = doc
    return out


def test_every_manifest_is_valid_kubernetes() -> None:
    docs = [*manifests().values(), yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())]
    assert {d["kind"] for d in docs} == {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Secret",
    }
    for doc in docs:
        assert kubernetes_validate.validate(doc, KUBERNETES, strict=True) == KUBERNETES


def test_the_deployment_drains_and_probes_what_relay_serves() -> None:
    found = manifests()
    pod = found["Deployment"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings.from_env(env, serve=False)
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert port == settings.port == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["relay", "drain"]
    # The grace period covers the drain and the hand-over after it (relay.server's 60 s).
    assert pod["terminationGracePeriodSeconds"] >= settings.drain_timeout_s + 60
    # The image's user (Dockerfile), non-root.
    uid = int(re.search(r"--uid (\d+)", DOCKERFILE.read_text()).group(1))  # type: ignore[union-attr]
    assert pod["securityContext"]["runAsUser"] == uid and pod["securityContext"]["runAsNonRoot"]
    # Writable state lives on the mounted volume (the root filesystem is read-only).
    mount = container["volumeMounts"][0]["mountPath"]
    assert settings.spool_path.startswith(mount) and container["securityContext"]["readOnlyRootFilesystem"]
    # The HPA scales on a metric relay exports; the Service and PDB select the pods.
    assert found["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"] == "relay_calls_active"
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["Service"]["spec"]["selector"] == labels
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels


def test_the_secret_example_names_what_relay_reads() -> None:
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.example.yaml").read_text())["stringData"]
    source = (ROOT / "relay" / "config.py").read_text()
    for name in secret:
        assert f'"{name}"' in source, name


def test_compose_runs_relay_beside_postgres_prometheus_and_the_dashboard() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "relay", "prometheus", "grafana"}
    build = services["relay"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    [job] = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["relay:8080"]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"])
    assert mounts["./grafana/relay.json"].startswith("/var/lib/grafana/dashboards/")
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "relay.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    for host_path in mounts:
        assert (DEPLOY / host_path).exists(), host_path


def test_the_dockerfile_runs_the_scripts_this_file_proves() -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "RUN sh deploy/container/build-wheels.sh /wheels" in dockerfile
    assert "RUN sh /opt/relay/install.sh /wheels" in dockerfile
    assert (
        'HEALTHCHECK --interval=10s --timeout=5s --start-period=10s CMD ["python", "/opt/relay/healthcheck.py"]'
        in dockerfile
    )
    assert re.search(r"^USER 10001$", dockerfile, re.M) and 'ENTRYPOINT ["relay"]' in dockerfile


async def test_the_image_build_steps_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """The build stage, the runtime stage and the HEALTHCHECK, in a virtualenv of their own."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    path = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(env_dir)}
    path.pop("PYTHONPATH", None)
    wheels = tmp_path / "wheels"
    for script, arg in (("build-wheels.sh", wheels), ("install.sh", wheels)):
        done = subprocess.run(
            ["sh", str(DEPLOY / "container" / script), str(arg)],
            env=path, cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    python = str(env_dir / "bin" / "python")
    assert list(wheels.glob("relay-*.whl")), "the build stage made relay's wheel"

    # The runtime image: `relay serve` as its entrypoint, in a directory of its own.
    port = _free_port()
    serve_env = {
        **path,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_PUBLIC_URL": "http://127.0.0.1",
        "RELAY_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
        "OPENAI_API_KEY": "sk-not-used",
        "TWILIO_AUTH_TOKEN": "not-used",
    }
    proc = await asyncio.create_subprocess_exec(
        str(env_dir / "bin" / "relay"), "serve", env=serve_env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        healthy = False
        for _ in range(100):
            check = await asyncio.create_subprocess_exec(
                python, str(DEPLOY / "container" / "healthcheck.py"), env=serve_env
            )
            if await check.wait() == 0:
                healthy = True
                break
            await asyncio.sleep(0.1)
        assert healthy, "the HEALTHCHECK never passed"
        proc.send_signal(signal.SIGTERM)  # no calls: the drain ends at once
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    version = subprocess.run([python, "-m", "relay", "--version"], env=path, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("relay ")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_build_context_leaves_out_local_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name in (".git", ".venv", "**/*.so", "relay/_fastpath.c", "*.sqlite3*", "*.spool"):
        assert name in ignored
