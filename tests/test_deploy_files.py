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
