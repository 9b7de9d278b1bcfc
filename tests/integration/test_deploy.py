"""deploy/ checked without Docker: Prometheus' own tool, a real scrape, and Hark's real options."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from media import __version__
from media.cli.main import LIST_OPTIONS, SERVE_OPTIONS
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


def test_manifests_use_hark_s_real_ports_probes_and_options() -> None:
    defaults = Config()
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    assert f"containerPort: {defaults.http_port}" in deployment
    assert f"containerPort: {defaults.grpc_port}" in deployment
    assert "httpGet: {path: /readyz, port: http}" in deployment
    assert "httpGet: {path: /healthz, port: http}" in deployment
    drain = float(re.search(r'"--drain-timeout", "(\d+)"', deployment)[1])  # type: ignore[index]
    pre_stop = float(re.search(r"sleep: \{seconds: (\d+)\}", deployment)[1])  # type: ignore[index]
    grace = float(re.search(r"terminationGracePeriodSeconds: (\d+)", deployment)[1])  # type: ignore[index]
    assert grace > drain + pre_stop

    service = (DEPLOY / "k8s" / "service.yaml").read_text()
    for target in re.findall(r"targetPort: (\w+)", service):
        assert f"name: {target}," in deployment

    dockerfile = (DEPLOY / "Dockerfile").read_text()
    port = re.search(r"HARK_HTTP_PORT=(\d+)", dockerfile)[1]  # type: ignore[index]
    assert f"127.0.0.1:{port}/healthz" in dockerfile
    assert "STOPSIGNAL SIGTERM" in dockerfile and "USER 10001" in dockerfile

    known = {"HARK_" + flag.upper().replace("-", "_") for flag, _, _ in SERVE_OPTIONS}
    known |= {"HARK_" + flag.upper().replace("-", "_") for flag, _ in LIST_OPTIONS}
    known |= {"HARK_INSECURE_NO_AUTH", "HARK_TARGET"}
    for path in DEPLOY.rglob("*"):
        if path.is_file() and path.suffix in ("", ".yaml", ".yml", ".md"):
            for name in re.findall(r"\bHARK_[A-Z_]+", path.read_text()):
                assert name in known, f"{path.name} sets {name}, which is no Hark option"


def k8s_documents() -> list[dict[str, Any]]:
    return [
        document
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for document in yaml.safe_load_all(path.read_text())
        if document
    ]


def test_the_k8s_manifests_are_valid_kubernetes_objects() -> None:
    """Schemas shipped inside kubernetes-validate: nothing is downloaded."""
    documents = k8s_documents()
    assert {d["kind"] for d in documents} == {"Deployment", "Service", "PodDisruptionBudget"}
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_deployment_fits_a_single_process_hark_on_host_networking() -> None:
    (deployment,) = [d for d in k8s_documents() if d["kind"] == "Deployment"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    # Sessions are pod-local and nothing routes a session to its pod: one replica.
    assert spec["replicas"] == 1
    if pod.get("hostNetwork"):
        assert spec["strategy"]["type"] == "Recreate"
        (rule,) = pod["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert rule["topologyKey"] == "kubernetes.io/hostname"
        assert rule["labelSelector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    registry, _, tag = container["image"].rpartition(":")
    assert tag == __version__ and "/" in registry, "a pushed, versioned image; never :latest"
    guide = (DEPLOY / "k8s" / "README.md").read_text()
    assert f"docker build -f deploy/Dockerfile -t {container['image']} ." in guide
    assert f"docker push {container['image']}" in guide


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
