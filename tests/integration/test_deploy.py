"""deploy/ checked without Docker: Prometheus' own tool, a real scrape, and Hark's real options."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import urllib.parse
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from media import __version__
from media.cli.main import LIST_OPTIONS, SERVE_OPTIONS, build_parser, config_from_args
from media.config import Config
from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, running_server

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
PROMTOOL = shutil.which("promtool")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# The schemas kubernetes-validate ships for this version are the ones the manifests must meet.
KUBERNETES_VERSION = "1.33.0"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if PROMTOOL is None:
        reason = "promtool is not installed (Debian package prometheus; make deps-debian)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI must check the Prometheus files", pytrace=False)
        pytest.skip(reason)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config_and_the_alert_rules() -> None:
    config = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "5 rules found" in rules.stdout


def used_metric_names() -> set[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "hark-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs.append((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return {name for expr in exprs for name in re.findall(r"\bhark_[a-z_]+", expr)}


async def test_every_metric_the_dashboard_and_rules_use_is_exported() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        await stub.ListSessions(pb.ListSessionsRequest())
        async with aiohttp.ClientSession() as http:
            async with http.get(app.base_url + "/metrics") as response:
                text = await response.text()
    exported = set()
    for family in text_string_to_metric_families(text):
        exported.add(family.name)
        exported.update(family.name + suffix for suffix in ("_total", *HISTOGRAM_SUFFIXES))
    used = used_metric_names()
    assert len(used) >= 10
    missing = sorted(used - exported)
    assert not missing, f"used in deploy/ but not exported: {missing}"


# What the kubelet would hand pod hark-0 of namespace "voice" on a node at 203.0.113.7.
POD_FIELDS = {
    "metadata.name": "hark-0",
    "metadata.namespace": "voice",
    "status.hostIP": "203.0.113.7",
}
# SIGTERM's drain is followed by closing what is left and stopping the servers (gRPC: 2 s grace).
STOP_S = 5.0
CLUSTER_DOMAIN = "svc.cluster.local"


def secret_value(key: str) -> str:
    return f"sample-{key}-0123456789abcdef"


def k8s_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def hark_statefulset() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The StatefulSet, its pod template and its one container."""
    statefulset = k8s_object("StatefulSet", "hark")
    template = statefulset["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return statefulset, template, container


def pod_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as the kubelet sets it: downward API fields, Secret keys
    (sample values), and $(NAME) references to variables defined earlier in the list expanded."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "value" in variable:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), variable["value"])
        elif "fieldRef" in variable["valueFrom"]:
            value = POD_FIELDS[variable["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            value = secret_value(variable["valueFrom"]["secretKeyRef"]["key"])
        env[variable["name"]] = value
    return env


def dockerfile_env() -> dict[str, str]:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    return dict(re.findall(r"\b(HARK_[A-Z_]+)=(\S+)", dockerfile))


def hark_config(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], args: list[str]) -> Config:
    """The Config ``hark serve`` builds in the image with this environment and these arguments,
    through Hark's own parser: an unknown flag or a bad value fails here as it would at start."""
    for name in list(os.environ):
        if name.startswith("HARK_"):
            monkeypatch.delenv(name)
    for name, value in {**dockerfile_env(), **env}.items():
        if name.startswith("HARK_"):
            monkeypatch.setenv(name, value)
    return config_from_args(build_parser().parse_args(["serve", *args]))


def named_ports(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {port["name"]: port for port in container["ports"]}


def test_every_hark_variable_and_flag_deploy_names_is_a_real_option() -> None:
    known = {"HARK_" + flag.upper().replace("-", "_") for flag, _, _ in SERVE_OPTIONS}
    known |= {"HARK_" + flag.upper().replace("-", "_") for flag, _ in LIST_OPTIONS}
    known |= {"HARK_INSECURE_NO_AUTH", "HARK_WHIP_REDIRECT", "HARK_TARGET"}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".md"):
            for name in re.findall(r"\bHARK_[A-Z_]+", path.read_text()):
                assert name in known, f"{path.name} sets {name}, which is no Hark option"

    flags = {f"--{flag}" for flag, _, _ in SERVE_OPTIONS}
    flags |= {f"--{flag}" for flag, _ in LIST_OPTIONS}
    flags |= {"--insecure-no-auth", "--whip-redirect"}
    # What the guides and comments say about Hark's flags (the manifests' own arguments go through
    # Hark's parser in the tests below); commands they show for other tools have flags of their own.
    other_tools = {"--from-literal", "--build"}  # kubectl create secret, docker compose up
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix in (".yaml", ".yml") or path.name == "Dockerfile":
            prose = "\n".join(re.findall(r"#.*", path.read_text()))
        elif path.suffix == ".md":
            prose = path.read_text()
        else:
            continue
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", prose):
            assert flag in flags | other_tools, f"{path.name} names {flag}, which is no Hark flag"

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    port = dockerfile_env()["HARK_HTTP_PORT"]
    assert f"127.0.0.1:{port}/healthz" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile and "USER 10001" in dockerfile
    assert 'ENTRYPOINT ["hark", "serve"]' in dockerfile


def test_the_k8s_manifests_are_valid_kubernetes_objects() -> None:
    """Schemas shipped inside kubernetes-validate: nothing is downloaded."""
    documents = k8s_documents()
    assert {d["kind"] for d in documents} == {
        "StatefulSet",
        "Service",
        "PodDisruptionBudget",
        "Deployment",
        "NetworkPolicy",
    }
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_each_pod_is_a_cluster_node_named_by_its_stable_dns_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    statefulset, template, container = hark_statefulset()
    assert "command" not in container, "the image's ENTRYPOINT (hark serve) runs"
    # No HARK_SERVICE_HOST, HARK_REDIS_PORT=tcp://... from the Services named hark*: Hark's
    # options are HARK_* variables, and one named like a Service's link would not parse.
    assert template["spec"]["enableServiceLinks"] is False
    config = hark_config(monkeypatch, pod_env(container), container.get("args", []))
    ports = named_ports(container)

    headless = k8s_object("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    # A draining or full pod still owns sessions the others forward to it by that name.
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= template["metadata"]["labels"].items()

    pod, namespace = POD_FIELDS["metadata.name"], POD_FIELDS["metadata.namespace"]
    dns_name = f"{pod}.{headless['metadata']['name']}.{namespace}.{CLUSTER_DOMAIN}"
    assert config.effective_node_id == pod
    assert config.http_host == config.grpc_host == "0.0.0.0"
    assert config.http_port == ports["http"]["containerPort"]
    assert config.grpc_port == ports["grpc"]["containerPort"]
    assert config.public_url == f"http://{dns_name}:{config.http_port}"
    assert config.grpc_public_address == f"{dns_name}:{config.grpc_port}"
    assert statefulset["spec"]["replicas"] >= 2

    assert config.token == secret_value("token")
    assert config.cluster_secret == secret_value("cluster-secret")
    redis = urllib.parse.urlsplit(config.redis_url or "")
    assert redis.password == secret_value("redis-password")
    redis_service = k8s_object("Service", redis.hostname or "")
    (redis_port,) = redis_service["spec"]["ports"]
    assert redis.port == redis_port["port"]
    redis_deployment = k8s_object("Deployment", redis_service["metadata"]["name"])
    redis_pod = redis_deployment["spec"]["template"]
    assert redis_service["spec"]["selector"].items() <= redis_pod["metadata"]["labels"].items()
    (redis_container,) = redis_pod["spec"]["containers"]
    assert named_ports(redis_container)[redis_port["targetPort"]]["containerPort"] == 6379
    assert redis_deployment["spec"]["replicas"] == 1


def test_each_worker_s_media_port_is_a_host_port_announced_at_the_node_s_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, template, container = hark_statefulset()
    config = hark_config(monkeypatch, pod_env(container), container.get("args", []))
    media = sorted(
        (port for port in container["ports"] if port["protocol"] == "UDP"),
        key=lambda port: port["containerPort"],
    )
    assert config.udp_port is not None
    workers = config.effective_workers
    assert [port["containerPort"] for port in media] == [
        config.udp_port + k for k in range(workers)
    ]
    assert all(port["hostPort"] == port["containerPort"] for port in media)
    assert config.ice_public_addresses == (POD_FIELDS["status.hostIP"],)
    assert float(container["resources"]["requests"]["cpu"]) >= workers
    # The host ports are the node's: at most one Hark pod per node.
    (rule,) = template["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert rule["topologyKey"] == "kubernetes.io/hostname"
    assert rule["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    # The workers' run directory: the root filesystem is read-only.
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in template["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_a_draining_pod_leaves_the_front_service_and_stops_within_its_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, template, container = hark_statefulset()
    config = hark_config(monkeypatch, pod_env(container), container.get("args", []))
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = template["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + config.drain_timeout + STOP_S

    front = k8s_object("Service", "hark")
    assert front["spec"].get("clusterIP") != "None"
    assert not front["spec"].get("publishNotReadyAddresses")
    assert front["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    ports = named_ports(container)
    assert {port["targetPort"] for port in front["spec"]["ports"]} == {"http", "grpc"}
    for service in (front, k8s_object("Service", "hark-nodes")):
        for port in service["spec"]["ports"]:
            assert port["port"] == ports[port["targetPort"]]["containerPort"]

    budget = k8s_object("PodDisruptionBudget", "hark")
    assert budget["spec"]["maxUnavailable"] == 1
    labels = template["metadata"]["labels"].items()
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels


def test_the_secret_the_guide_creates_holds_every_key_the_manifests_read() -> None:
    guide = (DEPLOY / "k8s" / "README.md").read_text()
    created = set(re.findall(r"--from-literal=([a-z-]+)=", guide))
    read = {
        variable["valueFrom"]["secretKeyRef"]["key"]
        for document in k8s_documents()
        if document["kind"] in ("StatefulSet", "Deployment")
        for container in document["spec"]["template"]["spec"]["containers"]
        for variable in container.get("env", [])
        if "secretKeyRef" in variable.get("valueFrom", {})
        and variable["valueFrom"]["secretKeyRef"]["name"] == "hark"
    }
    assert read == created == {"token", "cluster-secret", "redis-password"}


def test_the_image_is_pushed_and_versioned_as_the_guide_says() -> None:
    _, _, container = hark_statefulset()
    registry, _, tag = container["image"].rpartition(":")
    assert tag == __version__ and "/" in registry, "a pushed, versioned image; never :latest"
    guide = (DEPLOY / "k8s" / "README.md").read_text()
    assert f"docker build -f deploy/Dockerfile -t {container['image']} ." in guide
    assert f"docker push {container['image']}" in guide


def compose_services() -> dict[str, dict[str, Any]]:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return compose["services"]  # type: ignore[no-any-return]


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """``environment`` with ${NAME:?message} given a sample value and ${NAME:-default} its
    default, as `docker compose` run with only HARK_TOKEN set would."""

    def substitute(match: re.Match[str]) -> str:
        name, operator, rest = match[1], match[2], match[3]
        if name == "HARK_TOKEN":
            return secret_value("token")
        assert operator == ":-", f"compose.yaml requires {name}: only HARK_TOKEN may be required"
        return rest

    return {
        name: re.sub(r"\$\{(\w+)(:[?-])?([^}]*)\}", substitute, str(value))
        for name, value in service.get("environment", {}).items()
    }


def seconds(duration: str) -> float:
    value = re.fullmatch(r"(\d+)s", duration)
    assert value, f"{duration}: write compose durations in seconds"
    return float(value[1])


def test_compose_runs_two_nodes_clustered_on_its_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose_services()
    nodes = {name: s for name, s in services.items() if "build" in s}
    assert len(nodes) == 2
    configs = {
        name: hark_config(monkeypatch, compose_env(node), node.get("command", []))
        for name, node in nodes.items()
    }
    # Host networking: one host, so no two nodes share a port, and 127.0.0.1 is the same host for
    # a browser on it and for the other node forwarding to this one.
    ports: list[int] = []
    for name, config in configs.items():
        assert nodes[name]["network_mode"] == "host"
        assert config.effective_node_id == name
        assert config.public_url == f"http://127.0.0.1:{config.http_port}"
        assert config.grpc_public_address == f"127.0.0.1:{config.grpc_port}"
        assert config.udp_port is not None
        ports += [config.http_port, config.grpc_port]
        ports += [config.udp_port + k for k in range(config.effective_workers)]
        assert seconds(nodes[name]["stop_grace_period"]) > config.drain_timeout + STOP_S
        assert "redis" in nodes[name]["depends_on"]
        healthcheck = nodes[name].get("healthcheck", {}).get("test") or [
            (DEPLOY / "Dockerfile").read_text()
        ]
        assert f"127.0.0.1:{config.http_port}/healthz" in " ".join(healthcheck)
    assert len(ports) == len(set(ports))

    redis = services["redis"]
    assert redis["network_mode"] == "host"
    command = redis["command"]
    redis_address = f"redis://{command[command.index('--bind') + 1]}:"
    redis_address += f"{command[command.index('--port') + 1]}/0"
    assert {config.redis_url for config in configs.values()} == {redis_address}

    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    (targets,) = job["static_configs"]
    scraped = {int(target.rsplit(":", 1)[1]) for target in targets["targets"]}
    assert scraped == {config.metrics_port or config.http_port for config in configs.values()}
    assert "host.docker.internal:host-gateway" in services["prometheus"]["extra_hosts"]


async def test_the_probes_and_healthchecks_ask_paths_hark_answers() -> None:
    _, _, container = hark_statefulset()
    paths = {
        container[probe]["httpGet"]["path"]
        for probe in ("readinessProbe", "livenessProbe", "startupProbe")
        if probe in container
    }
    checks = [(DEPLOY / "Dockerfile").read_text()] + [
        " ".join(service["healthcheck"]["test"])
        for service in compose_services().values()
        if "healthcheck" in service and "build" in service
    ]
    paths |= {path for check in checks for path in re.findall(r"127\.0\.0\.1:\d+(/\w+)", check)}
    assert paths == {"/readyz", "/healthz"}
    async with running_server() as app, aiohttp.ClientSession() as http:
        for path in sorted(paths):
            async with http.get(app.base_url + path) as response:
                assert response.status == 200, f"{path}: {response.status}"


def alert_rule(name: str) -> dict[str, Any]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    (rule,) = [r for group in groups for r in group["rules"] if r.get("alert") == name]
    return rule  # type: ignore[no-any-return]


def test_alerts_fire_when_hark_is_down_or_sessions_fail_ice(tmp_path: pathlib.Path) -> None:
    down = alert_rule("HarkDown")
    failing = alert_rule("HarkSessionsFailing")
    scraped_then_down = {
        "interval": "15s",
        "input_series": [{"series": 'up{job="hark", instance="hark:8080"}', "values": "1 1 0x20"}],
        "alert_rule_test": [
            {"eval_time": "30s", "alertname": "HarkDown", "exp_alerts": []},
            {
                "eval_time": "2m",
                "alertname": "HarkDown",
                "exp_alerts": [
                    {
                        "exp_labels": {
                            "severity": "critical",
                            "job": "hark",
                            "instance": "hark:8080",
                        },
                        "exp_annotations": down["annotations"],
                    }
                ],
            },
        ],
    }
    never_scraped = {
        "interval": "15s",
        "input_series": [{"series": 'up{job="other", instance="x:1"}', "values": "1x20"}],
        "alert_rule_test": [
            {
                "eval_time": "2m",
                "alertname": "HarkDown",
                "exp_alerts": [
                    {
                        "exp_labels": {"severity": "critical", "job": "hark"},
                        "exp_annotations": down["annotations"],
                    }
                ],
            }
        ],
    }
    ice_failing = {
        "interval": "15s",
        "input_series": [
            {"series": 'hark_sessions_closed_total{reason="ICE_FAILED"}', "values": "0+10x80"}
        ],
        "promql_expr_test": [
            {"expr": f"count({failing['expr']})", "eval_time": "15m", "exp_samples": [{"value": 1}]}
        ],
    }
    tests = {
        "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
        "evaluation_interval": "15s",
        "tests": [scraped_then_down, never_scraped, ice_failing],
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docker_context_leaves_out_the_venv_and_caches_but_not_what_the_image_copies() -> None:
    lines = (DEPLOY.parent / ".dockerignore").read_text().splitlines()
    ignored = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "**/__pycache__", ".mypy_cache", "test-output"} <= ignored
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    copied = {
        src
        for line in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.M)
        for src in line.split()
    }
    assert copied == {"pyproject.toml", "README.md", "LICENSE", "media"}
    assert not copied & ignored
    assert (DEPLOY.parent / "LICENSE").read_text().split()[:3] == ["Apache", "License", "Version"]
