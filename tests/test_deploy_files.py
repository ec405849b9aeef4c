"""The deploy files, read as a user's machine would: every one runs the service with its state on
the writable place it provides, named by STREAM_NUDGE_STATE_DIR whatever config is mounted."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from stream_nudge.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
STATE = "/var/lib/stream-nudge"


def test_the_environment_names_the_state_directory_over_any_config(tmp_path, monkeypatch):
    config = tmp_path / "c.yaml"
    config.write_text("checkpoint:\n  directory: ./state\n")
    monkeypatch.setenv("STREAM_NUDGE_STATE_DIR", STATE)
    assert load_config(config).checkpoint.directory == STATE


def test_dockerfile_state_is_its_volume():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(rf'^VOLUME \["{STATE}"\]$', text, re.M)
    assert re.search(rf"^ENV STREAM_NUDGE_STATE_DIR={STATE}$", text, re.M)
    # The volume is created by the user the service runs as (its home), so it is writable.
    assert f"--home-dir {STATE} --create-home nudge" in text and "USER nudge" in text


def test_compose_state_is_its_volume():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    service = compose["services"]["stream-nudge"]
    assert service["environment"]["STREAM_NUDGE_STATE_DIR"] == STATE
    assert any(v.split(":")[1] == STATE for v in service["volumes"] if v.startswith("nudge-state"))


def test_systemd_state_is_writable_under_its_sandbox():
    text = (DEPLOY / "systemd" / "stream-nudge.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings["StateDirectory"] == "stream-nudge"  # systemd makes /var/lib/stream-nudge
    assert settings["WorkingDirectory"] == STATE
    assert settings["Environment"] == f"STREAM_NUDGE_STATE_DIR={STATE}"
    assert STATE in settings["ReadWritePaths"].split()


def test_kubernetes_state_is_its_volume():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "stream-nudge.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["STREAM_NUDGE_STATE_DIR"] == STATE
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == STATE


def test_compose_serves_host_producers_keeps_kafka_data_and_waits_for_the_last_checkpoint():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    # The port published to the host is a listener advertised at an address the host reaches.
    host_port = kafka["ports"][0].split(":")[-1]
    assert any(
        a.endswith(f":{host_port}") and a.startswith("127.0.0.1") for a in advertised.values()
    )
    assert any(v.startswith("kafka-data:") for v in kafka["volumes"])
    service = compose["services"]["stream-nudge"]
    assert service["stop_grace_period"] == "2m"
    assert (
        service["environment"]["STREAM_NUDGE_KAFKA_BOOTSTRAP"]
        == f"kafka:{advertised['INTERNAL'].split(':')[1]}"
    )


def test_the_image_health_check_reads_the_metrics_port_the_service_uses(monkeypatch):
    text = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r"^ENV STREAM_NUDGE_METRICS_PORT=(\d+)$", text, re.M).group(1)
    health = re.search(r"^HEALTHCHECK .*$", text, re.M).group(0)
    assert "STREAM_NUDGE_METRICS_PORT" in health and "9108" not in health
    monkeypatch.setenv("STREAM_NUDGE_METRICS_PORT", port)
    assert load_config().metrics.port == int(port)
    ignored = (DEPLOY.parent / ".dockerignore").read_text().split()
    assert ".venv/" in ignored and ".git/" in ignored


def test_kubernetes_does_not_pull_an_image_no_registry_serves_and_systemd_installs_from_a_checkout():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "stream-nudge.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    unit = (DEPLOY / "systemd" / "stream-nudge.service").read_text()
    assert "pip install stream-nudge" not in unit and "pip install /opt/src/stream-nudge" in unit


def test_the_sink_runs_beside_the_service_in_every_deploy_file(monkeypatch):
    compose = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    sink = compose["services"]["stream-nudge-sink"]
    assert sink["entrypoint"][:2] == ["stream-nudge", "sink"]
    env = sink["environment"]
    # It writes to the compose file's own PostgreSQL, by its service name, and the image's health
    # check reads the port the sink serves on.
    assert "@postgres:5432/" in env["STREAM_NUDGE_SINK_TO"] and "postgres" in compose["services"]
    assert env["STREAM_NUDGE_METRICS_PORT"] == env["STREAM_NUDGE_SINK_METRICS_PORT"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config()
    assert config.sink.metrics_port == int(env["STREAM_NUDGE_SINK_METRICS_PORT"])
    assert config.sink.to == env["STREAM_NUDGE_SINK_TO"]
    assert "'.[sinks]'" in (DEPLOY / "Dockerfile").read_text()
    (deployment,) = yaml.safe_load_all(
        (DEPLOY / "kubernetes" / "stream-nudge-sink.yaml").read_text()
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["stream-nudge", "sink"]
    port = {e["name"]: e.get("value") for e in container["env"]}["STREAM_NUDGE_SINK_METRICS_PORT"]
    assert container["ports"][0]["containerPort"] == int(port)
    unit = (DEPLOY / "systemd" / "stream-nudge-sink.service").read_text()
    assert "stream-nudge sink --config" in unit and "[sinks]" in unit
