"""The deployment files, checked offline: every Kubernetes object against its schema (as
kustomize builds it), the compose file against the Compose specification, and both against
the code: probe paths and ports, variables, commands and grace periods.

`compose_spec.json` is the Compose specification's schema as docker-compose 1.29.2 ships
it (`compose/config/compose_spec.json`, Apache-2.0)."""

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import kubernetes_validate
import prometheus_client
import pytest
import yaml
from jsonschema import Draft201909Validator
from websockets.datastructures import Headers
from websockets.http11 import Request

import ackwire.bus.telemetry
import ackwire.gateway.metrics
import ackwire.jobs.records
import ackwire.node.worker
import ackwire.scheduler.expiry
import ackwire.scheduler.jobs  # noqa: F401 (with the five above: every metric, registered)
from ackwire.bus import subjects
from ackwire.cli.main import build_parser
from ackwire.gateway.connection import _CONFIRM_ON_CLOSE_S
from ackwire.probes import Probes
from ackwire.settings import Settings

ROOT = Path(__file__).parents[2]
KUSTOMIZATIONS = ["infra/k8s/base", "infra/k8s/overlays/production"]
KUBERNETES_VERSION = "1.32.0"
#: websockets' default close timeout: how long a gateway waits for one client's close.
CLOSE_TIMEOUT_S = 10.0


def built(kustomization: str) -> list[dict[str, Any]]:
    """`kubectl kustomize` (kustomize built into kubectl), offline."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / kustomization)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def containers(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for deployment in of_kind(objects, "Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


def config_literals(objects: list[dict[str, Any]]) -> dict[str, str]:
    [config] = of_kind(objects, "ConfigMap").values()
    data: dict[str, str] = config["data"]
    return data


def is_setting(name: str) -> bool:
    return name.removeprefix("ACKWIRE_").lower() in Settings.model_fields


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kubernetes_object_is_valid_against_its_schema(kustomization: str) -> None:
    objects = built(kustomization)
    kinds = {o["kind"] for o in objects}
    assert {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ConfigMap",
        "ScaledObject",
    } <= kinds
    for obj in objects:
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # KEDA's own kind: checked against the code below
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_probes_ports_commands_and_variables_agree_with_the_code(kustomization: str) -> None:
    objects = built(kustomization)
    probes = Probes(lambda: None)
    parser = build_parser()
    variables = dict(config_literals(objects))
    for deployment, container in containers(objects):
        name = deployment["metadata"]["name"]
        env = {e["name"]: e for e in container.get("env", [])}
        variables.update({k: v.get("value", "") for k, v in env.items()})
        # The command parses as the CLI's, with the pod's name for a service name.
        args = [a.replace("$(POD_NAME)", "pod-0") for a in container["args"]]
        parsed = parser.parse_args(args)
        assert "POD_NAME" in env, name
        # Probes: the paths answer 200 on a ready service, on the port the service listens on.
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        service_port = (
            parsed.port if parsed.command == "gateway" else int(env["ACKWIRE_HTTP_PORT"]["value"])
        )
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (name, probe)
            assert port[get["port"]] == service_port, (name, probe)
            answer = probes.respond(None, Request(path, Headers()))  # type: ignore[arg-type]
            assert answer is not None
            assert answer.status_code == HTTPStatus.OK, (name, path)
        secret = env.get("ACKWIRE_JWT_SECRET", {}).get("valueFrom", {}).get("secretKeyRef")
        if parsed.command == "gateway":
            assert secret == {"name": "ackwire-jwt", "key": "secret"}
    # Every variable named is one the services read.
    unknown = [v for v in variables if v.startswith("ACKWIRE_") and not is_setting(v)]
    assert unknown == []
    Settings.model_validate(
        {k.removeprefix("ACKWIRE_").lower(): v for k, v in variables.items() if is_setting(k)}
    )
    assert variables["ACKWIRE_REPLICAS"] == "3"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_grace_periods_outlast_the_drains(kustomization: str) -> None:
    objects = built(kustomization)
    drain = float(config_literals(objects)["ACKWIRE_NODE_DRAIN_S"])
    for deployment, container in containers(objects):
        command = container["args"][0]
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        sleep = float(pre_stop["command"][1]) if pre_stop else 0.0
        if command == "gateway":
            # Routing stops first (preStop), then each client's acks are confirmed and its
            # close completes (side by side); a margin for leaving NATS.
            assert sleep >= 2
            assert grace >= sleep + _CONFIRM_ON_CLOSE_S + CLOSE_TIMEOUT_S + 5
        elif command == "node":
            assert grace >= drain + 5
        else:
            assert grace >= 10


def test_gateways_have_no_sticky_sessions_and_disruptions_are_bounded() -> None:
    objects = built("infra/k8s/base")
    service = of_kind(objects, "Service")["ackwire-gateway"]
    assert service["spec"]["sessionAffinity"] == "None"
    budgets = of_kind(objects, "PodDisruptionBudget")
    assert set(budgets) == {"ackwire-gateway", "ackwire-scheduler"}
    assert of_kind(objects, "Deployment")["ackwire-scheduler"]["spec"]["replicas"] == 2
    [hpa] = of_kind(objects, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"]["name"] == "ackwire-gateway"
    assert hpa["spec"]["minReplicas"] >= 2


def test_nodes_scale_on_the_backlog_of_their_kinds_work_consumers() -> None:
    objects = built("infra/k8s/base")
    [scaled] = of_kind(objects, "ScaledObject").values()
    node = of_kind(objects, "Deployment")["ackwire-node"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == node["metadata"]["name"]
    args = node["spec"]["template"]["spec"]["containers"][0]["args"]
    kinds = args[args.index("--kinds") + 1].split(",")
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"nats-jetstream"}
    assert {t["metadata"]["stream"] for t in triggers} == {subjects.JOBS_STREAM}
    assert sorted(t["metadata"]["consumer"] for t in triggers) == sorted(
        subjects.work_consumer(kind) for kind in kinds
    )


def test_nats_values_ask_for_a_three_server_jetstream_cluster_on_volumes() -> None:
    values = yaml.safe_load((ROOT / "infra/nats/values.yaml").read_text())
    config = values["config"]
    assert config["cluster"] == {"enabled": True, "replicas": 3}
    assert config["jetstream"]["enabled"] is True
    assert config["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert config["monitor"]["enabled"] is True  # KEDA reads the backlog there


def test_the_compose_file_follows_the_compose_specification_and_the_code() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    schema = json.loads((Path(__file__).parent / "compose_spec.json").read_text())
    errors = sorted(Draft201909Validator(schema).iter_errors(compose), key=str)
    assert errors == [], errors[0].message if errors else ""

    services = compose["services"]
    parser = build_parser()
    by_command: dict[str, list[str]] = {}
    nats = [name for name, s in services.items() if s["image"].startswith("nats:")]
    assert len(nats) == 3
    for name in nats:
        command = services[name]["command"]
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(routes) == sorted(f"nats://{n}:6222" for n in nats)
        assert "-js" in command
    for name, service in services.items():
        assert "healthcheck" in service, name
        if name in nats:
            continue
        parsed = parser.parse_args(service["command"])
        by_command.setdefault(parsed.command, []).append(name)
        env = service["environment"]
        assert all(is_setting(k) for k in env), name
        assert env["ACKWIRE_REPLICAS"] == "3"
        assert sorted(env["ACKWIRE_NATS_URL"].split(",")) == sorted(
            f"nats://{n}:4222" for n in nats
        )
        probe = shlex.join(service["healthcheck"]["test"])
        port = parsed.port if parsed.command == "gateway" else int(env["ACKWIRE_HTTP_PORT"])
        assert f"127.0.0.1:{port}/readyz" in probe, name
    assert {k: len(v) for k, v in by_command.items()} == {"gateway": 2, "scheduler": 2, "node": 2}


def test_the_dashboard_asks_only_for_metrics_the_services_export() -> None:
    """Every series a panel's query names is registered by the code (imported here as
    the services import it); a renamed metric would leave a panel silently empty."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
    exported = {
        family.name + suffix
        for family in prometheus_client.REGISTRY.collect()
        for suffix in suffixes.get(family.type, ("",))
    }
    dashboard = json.loads((ROOT / "infra/grafana/ackwire-dashboard.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(ackwire_[a-z_]+)", target["expr"])
    }
    assert len(asked) >= 10
    assert asked - exported == set()
