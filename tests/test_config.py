"""Configuration: defaults, the example file, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from stream_nudge.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parent.parent


def test_defaults_and_derived_values():
    c = load_config()
    assert c == Config()
    assert (
        c.similarity == "cosine"
        and load_config(overrides={"method": "nudge-m"}).similarity == "dot"
    )
    assert c.min_improvement == pytest.approx(1 / c.validation.window)


def test_the_example_config_loads_and_matches_the_defaults():
    example = load_config(REPO / "config.example.yaml")
    assert example == Config()


def test_the_example_config_names_every_key():
    """A key added to the config (decay, say) must be documented in the example file too."""
    import dataclasses

    import yaml

    raw = yaml.safe_load((REPO / "config.example.yaml").read_text())
    missing = []

    def walk(node, data, prefix):
        for f in dataclasses.fields(node):
            if not isinstance(data, dict) or f.name not in data:
                missing.append(prefix + f.name)
            elif dataclasses.is_dataclass(getattr(node, f.name)):
                walk(getattr(node, f.name), data[f.name], f"{prefix}{f.name}.")

    walk(Config(), raw, "")
    assert missing == []


@pytest.mark.parametrize(
    "text,key",
    [
        ("methd: nudge-n\n", "methd"),
        ("validation:\n  windoww: 3\n", "validation.windoww"),
        ("method: nudge-x\n", "method"),
        ("objective: precision\n", "objective"),
        ("validation:\n  fraction: 1.5\n", "validation.fraction"),
        ("validation:\n  window: many\n", "validation.window"),
        ("validation:\n  fold_evicted: maybe\n", "validation.fold_evicted"),
        ("gamma:\n  max: 3\n", "gamma.max"),
        ("publish:\n  encoding: xml\n", "publish.encoding"),
        ("limits: 5\n", "limits"),
        ("- just\n- a list\n", "the top level"),
    ],
)
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(exc.value).startswith(key)


def test_cli_exits_2_naming_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("gamma:\n  every_event: 10\n")
    for args in (["demo"], ["replay", "--docs", "x", "--events", "y", "--out", "z"]):
        run = subprocess.run(
            [sys.executable, "-m", "stream_nudge", *args, "--config", str(path)],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 2
        assert "gamma.every_event: unknown key" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "stream_nudge", "demo", "--config", str(tmp_path / "none.yaml")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and "cannot read" in run.stderr


def test_yaml_syntax_errors_are_config_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("security", "message"),
    [
        (
            {"sasl_mechanizm": "PLAIN"},
            "kafka.security.sasl_mechanizm: unknown key (did you mean 'sasl_mechanism'?)",
        ),
        ({"security_protocol": "TLS"}, "kafka.security.security_protocol: 'TLS' is not one of"),
        (
            {"sasl_mechanism": "PLAIN"},
            "kafka.security.sasl_plain_username: required with sasl_mechanism PLAIN",
        ),
        ({"ssl_check_hostname": "yes"}, "kafka.security.ssl_check_hostname: must be true or false"),
        ({"ssl_cafile": "/nonexistent/ca.pem"}, "kafka.security.ssl_cafile: no such file"),
    ],
)
def test_kafka_security_is_checked_at_load_naming_the_key(security, message):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides={"kafka": {"security": security}})
    assert str(exc.value).startswith(message)


def test_secrets_from_the_environment_complete_the_security_settings(monkeypatch):
    monkeypatch.setenv("STREAM_NUDGE_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("STREAM_NUDGE_KAFKA_SASL_PASSWORD", "secret")
    c = load_config(overrides={"kafka": {"security": {"sasl_mechanism": "SCRAM-SHA-256"}}})
    assert c.kafka.security["sasl_plain_username"] == "svc"


@pytest.mark.parametrize("output", ["updates", "dead_letters"])
@pytest.mark.parametrize("input_", ["docs", "events"])
def test_an_output_topic_that_is_an_input_topic_is_refused(output, input_):
    with pytest.raises(ConfigError, match=rf"kafka\.topics\.{output}: 'same' is also"):
        load_config(overrides={"kafka": {"topics": {output: "same", input_: "same"}}})


@pytest.mark.parametrize("client", ["confluent-kafka", "kafka-python"])
def test_a_configuration_the_kafka_client_refuses_is_recognised_as_such(client):
    """Both clients' refusals become a ClientError marked as a configuration error (the service
    exits 2 on it instead of retrying); a sink failure or a timeout is not one."""
    from stream_nudge.kafka import (
        ClientError,
        SinkError,
        confluent,
        is_configuration_error,
        kafkapython,
    )

    with pytest.raises(ClientError) as refused:
        if client == "confluent-kafka":
            # librdkafka takes linger.ms up to 900,000 (kafka-python takes any).
            confluent.KafkaProducer("127.0.0.1:1", "t", {}, 10**8, 1 << 20, 1 << 20, None)
        else:
            # kafka-python refuses settings it does not know (our config checks its own keys).
            kafkapython.KafkaProducer("127.0.0.1:1", "t", {"bogus_setting": 1}, 0, 1, 1, None)
    assert is_configuration_error(refused.value), refused.value
    assert not is_configuration_error(SinkError("a message was not delivered"))
    assert not is_configuration_error(ClientError("_TRANSPORT: Unable to bootstrap"))
