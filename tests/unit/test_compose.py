"""compose.yaml and the Dockerfile agree with the CLI (no Docker engine runs here to try them).

Each service's command is parsed by the real CLI parser, and each serving service's
configuration is resolved as its container would resolve it: the Dockerfile's ENV, then the
service's environment, then its flags.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggtrio.cli import build_parser
from aggtrio.config import ServeConfig, WatchConfig
from aggtrio.settings import CONFIG_ENV, SECTIONS, resolve, serve_config, watch_config

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "aggtrio:latest"


def load_compose() -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(compose, dict)
    return compose


SERVICES: dict[str, dict[str, Any]] = load_compose()["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for pair in shlex.split(rest):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def dockerfile_json(instruction: str) -> list[str]:
    (rest,) = [rest for word, rest in dockerfile_instructions() if word == instruction]
    value = yaml.safe_load(rest)  # the exec form is a JSON array, and JSON is YAML
    assert isinstance(value, list)
    return [str(item) for item in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The container's environment: the image's ENV, then the service's."""
    env = dockerfile_env()
    declared = service.get("environment", {})
    if isinstance(declared, list):
        declared = dict(item.split("=", 1) for item in declared)
    env.update({name: str(value) for name, value in declared.items()})
    return env


def command(service: dict[str, Any]) -> list[str]:
    given = service.get("command", dockerfile_json("CMD"))
    return shlex.split(given) if isinstance(given, str) else [str(word) for word in given]


def parse(argv: list[str]) -> argparse.Namespace:
    """The CLI's own parsing; an unknown flag fails the test with argparse's message."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"the CLI refuses {argv}") from exc


def serve_config_of(name: str) -> ServeConfig:
    args = parse(command(SERVICES[name]))
    assert args.command == "serve"
    return serve_config(resolve("serve", args, environment(SERVICES[name]), None))


def watch_config_of(name: str) -> WatchConfig:
    args = parse(command(SERVICES[name]))
    assert args.command == "watch"
    return watch_config(resolve("watch", args, environment(SERVICES[name]), None))


SERVERS = [name for name in SERVICES if command(SERVICES[name])[0] == "serve"]


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, published port, container port) of each `ports` entry."""
    entries = []
    for entry in service.get("ports", []):
        *address, host_port, container_port = str(entry).split(":")
        entries.append((":".join(address), int(host_port), int(container_port)))
    return entries


def test_there_are_servers_a_watch_and_offline_simulators() -> None:
    assert {"aggtrio", "aggtrio-offline"} <= set(SERVERS)
    assert any(command(s)[0] == "watch" for s in SERVICES.values())
    assert any(command(s)[0] == "simulate" for s in SERVICES.values())


def test_every_service_runs_the_image_the_compose_file_builds() -> None:
    built = [s for s in SERVICES.values() if "build" in s]
    assert len(built) == 1
    assert built[0]["build"] in (".", {"context": "."})
    for name, service in SERVICES.items():
        assert service.get("image") == IMAGE, name


def test_the_image_runs_the_cli_as_a_non_root_user() -> None:
    assert dockerfile_json("ENTRYPOINT") == ["python", "-m", "aggtrio"]
    assert dockerfile_json("CMD") == ["serve"]
    (user,) = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    assert user.split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_variable_is_a_setting_with_a_valid_value(name: str) -> None:
    options = {
        env: option
        for section in SECTIONS.values()
        for option in section
        for env in (option.env, *option.env_aliases)
    }
    for variable, value in environment(SERVICES[name]).items():
        if variable.startswith("AGGTRIO_") and variable != CONFIG_ENV:
            assert variable in options, f"{name}: {variable} is not a setting"
            options[variable].kind.from_text(value)  # raises ConfigError naming the problem


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_command_is_one_the_cli_accepts(name: str) -> None:
    args = parse(command(SERVICES[name]))
    # Flags and variables together make a valid configuration (a ConfigError says why not).
    if args.command == "serve":
        serve_config_of(name)
    elif args.command == "watch":
        watch_config_of(name)


@pytest.mark.parametrize("name", SERVERS)
def test_servers_listen_on_every_interface_and_publish_their_configured_port(name: str) -> None:
    config = serve_config_of(name)
    assert config.host == "0.0.0.0"  # loopback inside a container is unreachable from outside
    ports = published(SERVICES[name])
    assert ports, f"{name} publishes no port"
    # The gRPC port, and the metrics port if metrics are on: nothing else, nothing missing.
    expected = {config.port} | ({config.metrics_port} if config.metrics_port else set())
    assert {container for _, _, container in ports} == expected


def test_the_dockerfile_exposes_the_default_port() -> None:
    (exposed,) = [rest for word, rest in dockerfile_instructions() if word == "EXPOSE"]
    assert int(exposed.split("/")[0]) == ServeConfig().port


def test_published_ports_do_not_collide() -> None:
    host_ports = [(addr, port) for s in SERVICES.values() for addr, port, _ in published(s)]
    assert len(host_ports) == len(set(host_ports))


def test_the_watch_service_targets_a_server_service_on_its_port() -> None:
    watchers = [name for name in SERVICES if command(SERVICES[name])[0] == "watch"]
    for name in watchers:
        host, _, port = watch_config_of(name).server.rpartition(":")
        assert host in SERVERS, name
        assert int(port) == serve_config_of(host).port
        assert host in SERVICES[name].get("depends_on", [])


def test_the_offline_server_reads_the_simulators_on_their_ports() -> None:
    (sim_name,) = [n for n in SERVICES if command(SERVICES[n])[0] == "simulate"]
    sim_args = parse(command(SERVICES[sim_name]))
    assert sim_args.host == "0.0.0.0"
    simulated = dict(text.split("=") for text in sim_args.venue)
    config = serve_config_of("aggtrio-offline")
    assert set(config.venues) <= set(simulated)
    for venue in config.venues:
        assert config.base_url(venue) == f"ws://{sim_name}:{simulated[venue]}"
    assert sim_name in SERVICES["aggtrio-offline"]["depends_on"]
    profiles = {tuple(SERVICES[n].get("profiles", ())) for n in (sim_name, "aggtrio-offline")}
    assert profiles == {("offline",)}
