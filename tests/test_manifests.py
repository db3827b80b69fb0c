"""The deployment files under deploy/, checked without a cluster.

Each kustomization is rendered by the real `kubectl kustomize`; every object is validated against
the Kubernetes API schemas (kubernetes-validate, strict, offline), and the custom resources that
schema set lacks (KServe's, the Prometheus Operator's) by their structure, their pod parts against
the Pod schema. Then what the manifests must agree on with the code: serve's options and ports,
the health endpoints, the drain, the paths the image writes to (docker/), the limits and LoRA files,
the metric names the autoscaler, the Prometheus adapter and the Grafana dashboard use, the models
model_analyzer profiles.
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from wan_triton.api.app import API_METRICS, ROUTES
from wan_triton.cli import parser
from wan_triton.contract import TEXT_TO_VIDEO, Limits, inputs_of, validate
from wan_triton.doctor import EXPECT_GPU_ENV
from wan_triton.lora import AllowList
from wan_triton.parallel import Parallel
from wan_triton.serving.metrics import METRICS
from wan_triton.serving.server import DRAIN_TIMEOUT_S, START_TIMEOUT_S, STOP_WAIT_S, TritonServer
from wan_triton.serving.settings import CHECKPOINT_ENV, STAGE_KEY_ENV

PROJECT = Path(__file__).resolve().parent.parent
DEPLOY = PROJECT / "deploy"
KUBECTL = shutil.which("kubectl")
RENDERS = {
    "base": "kubernetes/base",
    "gpu": "kubernetes/overlays/gpu",
    "multi-gpu": "kubernetes/overlays/multi-gpu",
    "cpu": "kubernetes/overlays/cpu",
    "kserve": "kserve",
}
# The gpu overlay with the OpenAI Videos API in front (components/api): its own tests, below.
API_RENDER = "gpu-api"
PATHS = {**RENDERS, API_RENDER: "kubernetes/overlays/gpu-api"}
# The oldest Kubernetes the manifests target, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
IMAGE = "ghcr.io/wan-triton/wan-triton-server"
DOCKERFILE = PROJECT / "docker/Dockerfile"
ENTRYPOINT = PROJECT / "docker/entrypoint.sh"
CHECKPOINT_CLAIM = "wan-checkpoints"
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe mounts an InferenceService's storageUri

# The metrics the models and the API export (label names besides the scrape's own), and Triton's prefix.
WAN_METRICS = {metric.name: set(metric.labels) for metric in METRICS + API_METRICS}
HISTOGRAMS = {metric.name for metric in METRICS + API_METRICS if metric.kind == "HISTOGRAM"}
TRITON_LABELS = {"nv_inference_": {"model", "version"}, "nv_gpu_": {"gpu_uuid"}}
SCRAPE_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint"}


@functools.cache
def rendered(name: str) -> tuple[dict, ...]:
    assert KUBECTL, "kubectl is not on PATH (CI installs it; Debian: apt-get install kubernetes-client)"
    done = subprocess.run([KUBECTL, "kustomize", str(DEPLOY / PATHS[name])], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(name: str, kind: str) -> list[dict]:
    return [doc for doc in rendered(name) if doc["kind"] == kind]


def one(name: str, kind: str) -> dict:
    found = objects(name, kind)
    assert len(found) == 1, f"{name}: {len(found)} {kind} objects"
    return found[0]


# Fields of KServe's ServingRuntimeSpec (v1alpha1) and of a predictor that are not PodSpec fields.
SERVING_RUNTIME_FIELDS = {
    "supportedModelFormats", "multiModel", "disabled", "protocolVersions", "workerSpec", "annotations", "labels",
    "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "replicas", "storageHelper", "builtInAdapter",
}  # fmt: skip
RUNTIME_POD_FIELDS = {"containers", "volumes", "nodeSelector", "affinity", "tolerations", "imagePullSecrets", "hostIPC"}
PREDICTOR_FIELDS = {
    "model", "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "containerConcurrency", "timeout",
    "canaryTrafficPercent", "logger", "batcher", "labels", "annotations", "deploymentStrategy",
}  # fmt: skip


def pod(name: str) -> tuple[dict, dict]:
    """(PodSpec, pod annotations) as the cluster runs it: the Deployment's template, or for KServe
    the runtime's pod parts with the predictor's pod fields (as KServe merges them)."""
    if name != "kserve":
        (deployment,) = [d for d in objects(name, "Deployment") if d["metadata"]["name"] == "wan-triton"]
        template = deployment["spec"]["template"]
        return template["spec"], template["metadata"].get("annotations", {})
    runtime = one(name, "ServingRuntime")["spec"]
    service = one(name, "InferenceService")
    predictor = service["spec"]["predictor"]
    spec = {key: value for key, value in predictor.items() if key not in PREDICTOR_FIELDS}
    for key in RUNTIME_POD_FIELDS & set(runtime):
        spec[key] = runtime[key] + spec.get(key, []) if isinstance(runtime[key], list) else runtime[key]
    return spec, {**service["metadata"].get("annotations", {}), **runtime.get("annotations", {})}


def server(spec: dict) -> dict:
    (container,) = [c for c in spec["containers"] if c["name"] in {"server", "kserve-container"}]
    return container


def serve_options(container: dict):
    """The container's args as the real `wan-triton serve` parses them, each spelled out in full."""
    options = parser().parse_args(["serve", *container["args"]])
    for arg in container["args"]:
        assert re.fullmatch(r"--[\w-]+=.+", arg), arg
        assert arg[2:].partition("=")[0].replace("-", "_") in vars(options), f"{arg}: not a serve option"
    return options


def gibibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Mi|Gi|Ti)?", quantity).groups()
    return float(number) * {"Mi": 1 / 1024, "Gi": 1, "Ti": 1024, None: 1 / 2**30}[unit]


def volume(spec: dict, mount_path: str) -> tuple[dict, dict]:
    """(mount, volume) that holds `mount_path` in the server container: the longest mount prefix."""
    mounts = [m for m in server(spec)["volumeMounts"] if Path(mount_path).is_relative_to(m["mountPath"])]
    assert mounts, f"{mount_path} is on no volume (the root filesystem is read-only)"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    (found,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    return mount, found


# --- Schemas -----------------------------------------------------------------------------------


def check_serving_runtime(doc: dict, name: str) -> None:
    assert doc["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = doc["spec"]
    known = SERVING_RUNTIME_FIELDS | RUNTIME_POD_FIELDS
    assert set(spec) <= known, set(spec) - known
    assert {"name": "triton", "version": "2", "autoSelect": False} in spec["supportedModelFormats"]
    assert "grpc-v2" in spec["protocolVersions"] and set(spec["protocolVersions"]) <= {"v1", "v2", "grpc-v1", "grpc-v2"}
    assert [c["name"] for c in spec["containers"]] == ["kserve-container"]
    # KServe routes the InferenceService's gRPC to the container port named h2c.
    (h2c,) = [p for p in spec["containers"][0]["ports"] if p["name"] == "h2c"]
    assert h2c["containerPort"] == serve_options(spec["containers"][0]).grpc_port


def check_inference_service(doc: dict, name: str) -> None:
    assert doc["apiVersion"] == "serving.kserve.io/v1beta1"
    runtime = one(name, "ServingRuntime")
    model = doc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]} for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert set(model) == {"runtime", "modelFormat", "protocolVersion", "storageUri"}  # the rest is the runtime's
    annotations = doc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    # An external autoscaler: the HPA targets the Deployment KServe creates for the predictor.
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"
    hpa = one(name, "HorizontalPodAutoscaler")["spec"]
    predictor = doc["spec"]["predictor"]
    assert hpa["scaleTargetRef"]["name"] == f"{doc['metadata']['name']}-predictor"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (predictor["minReplicas"], predictor["maxReplicas"])
    # The pod KServe builds from both, against the real Pod schema.
    spec, _ = pod(name)
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": spec}, version, strict=True
        )


def check_service_monitor(doc: dict, name: str) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    wanted = doc["spec"]["selector"]["matchLabels"].items()
    selected = [s for s in objects(name, "Service") if wanted <= s["metadata"]["labels"].items()]
    api = doc["metadata"]["name"] == "wan-triton-api"  # the API's own metrics, on its own port
    assert [s["metadata"]["name"] for s in selected] == ["wan-triton-api" if api else "wan-triton-metrics"]
    ports = {p["name"]: p for p in selected[0]["spec"]["ports"]}
    for endpoint in doc["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        port = api_options(api_container(name)).port if api else serve_options(server(pod(name)[0])).metrics_port
        assert ports[endpoint["port"]]["port"] == port


CUSTOM_RESOURCES = {
    "ServingRuntime": check_serving_runtime,
    "InferenceService": check_inference_service,
    "ServiceMonitor": check_service_monitor,
}


def validated_kinds(name: str) -> set[str]:
    """Every object of a render checked (schemas, or the custom resources' checks); their kinds."""
    kinds = set()
    for doc in rendered(name):
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM_RESOURCES:
            CUSTOM_RESOURCES[doc["kind"]](doc, name)
            continue
        for version in KUBERNETES_VERSIONS:  # an unknown kind raises SchemaNotFoundError
            kubernetes_validate.validate(doc, version, strict=True)
    return kinds


@pytest.mark.parametrize("name", RENDERS)
def test_every_object_validates(name):
    kinds = validated_kinds(name)
    plain = {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"}
    expected = {
        "base": plain,
        "gpu": plain | {"ServiceMonitor", "Ingress"},
        "multi-gpu": plain | {"ServiceMonitor", "Ingress"},
        "cpu": plain - {"HorizontalPodAutoscaler"},
        "kserve": {"ConfigMap", "ServingRuntime", "InferenceService", "HorizontalPodAutoscaler"},
    }
    assert kinds == expected[name]


def test_strict_validation_refuses_an_unknown_field():
    deployment = json.loads(json.dumps(one("gpu", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


# --- The pod -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_server_options_ports_and_probes(name):
    spec, annotations = pod(name)
    container = server(spec)
    options = serve_options(container)
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    if name != "kserve":
        assert ports == {"http": options.http_port, "grpc": options.grpc_port, "metrics": options.metrics_port}
        assert (options.http_port, options.grpc_port, options.metrics_port) == (8000, 8001, 8002)
        assert annotations["prometheus.io/port"] == str(options.metrics_port)
    else:
        assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
        assert annotations["prometheus.kserve.io/port"] == str(options.metrics_port)
    probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness", "liveness")}
    assert {kind: probe["path"] for kind, probe in probes.items()} == {
        "startup": "/v2/health/ready",
        "readiness": "/v2/health/ready",
        "liveness": "/v2/health/live",
    }
    for probe in probes.values():
        assert ports.get(probe["port"], probe["port"]) == options.http_port
    # Triton opens its endpoints only once every model is loaded: minutes for a real checkpoint, at
    # start and again when serve restarts it after a dead stub; serve itself waits START_TIMEOUT_S.
    for kind in ("startup", "liveness"):
        probe = container[f"{kind}Probe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= START_TIMEOUT_S, kind
    assert all(c["image"].startswith(f"{IMAGE}:") for c in spec["containers"] + spec.get("initContainers", []))


@pytest.mark.parametrize("name", RENDERS)
def test_mounts_name_volumes_of_the_pod(name):
    spec, _ = pod(name)
    volumes = [v["name"] for v in spec["volumes"]]
    assert len(set(volumes)) == len(volumes)
    mounted = {m["name"] for c in spec["containers"] + spec.get("initContainers", []) for m in c["volumeMounts"]}
    assert mounted == set(volumes), set(volumes) ^ mounted


@pytest.mark.parametrize("name", RENDERS)
def test_termination_outlasts_the_drain(name):
    spec, _ = pod(name)
    pre_stop = server(spec)["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    stop_timeout = inspect.signature(TritonServer.stop).parameters["timeout"].default
    budget = int(pre_stop[1]) + DRAIN_TIMEOUT_S + STOP_WAIT_S + stop_timeout
    assert spec["terminationGracePeriodSeconds"] > budget


@pytest.mark.parametrize("name", RENDERS)
def test_runs_unprivileged_on_a_read_only_root(name):
    spec, _ = pod(name)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec.get("automountServiceAccountToken") is False
    for container in spec["containers"] + spec.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context.get("privileged", False)
    # Where the image writes (its caches, the served repository's links and configs): emptyDirs.
    container = server(spec)
    env = image_environment() | {e["name"]: e["value"] for e in container["env"]}
    writable = {"/tmp", served_repository(), *(value for value in env.values() if value.startswith("/"))}
    assert {"/tmp", "/var/cache/wan-triton"} <= writable
    for path in writable:
        mount, found = volume(spec, path)
        assert "emptyDir" in found and not mount.get("readOnly"), path
    # The entrypoint chooses the repository (links to the image's read-only one): never replaced here.
    assert not [arg for arg in container["args"] if arg.startswith("--repository")]


def image_environment() -> dict[str, str]:
    """The server image's own environment (the Dockerfile's server stage)."""
    stage = DOCKERFILE.read_text().split(" AS server\n", 1)[1].split("\nFROM ", 1)[0]
    values = {}
    for instruction in re.findall(r"^ENV ((?:.*\\\n)*.*)$", stage, flags=re.MULTILINE):
        values |= dict(re.findall(r"(\w+)=(\S+)", instruction.replace("\\\n", " ")))
    assert "WAN_TRITON_CACHE" in values, "the image's server stage sets no WAN_TRITON_CACHE"
    return values


def served_repository() -> str:
    """Where the image's entrypoint builds the repository that serve runs on."""
    return re.search(r"served=\$\{WAN_TRITON_SERVED_REPOSITORY:-([^}]+)\}", ENTRYPOINT.read_text()).group(1)


@pytest.mark.parametrize("name", RENDERS)
def test_shared_memory_is_sized_memory(name):
    spec, _ = pod(name)
    mount, shm = volume(spec, "/dev/shm")
    assert mount["mountPath"] == "/dev/shm"
    assert shm["emptyDir"]["medium"] == "Memory"
    size = gibibytes(shm["emptyDir"]["sizeLimit"])
    # A Memory emptyDir counts against the container's memory limit.
    assert size < gibibytes(server(spec)["resources"]["limits"]["memory"])
    assert size >= {"base": 4, "gpu": 16, "multi-gpu": 16, "cpu": 1, "kserve": 16}[name]


@pytest.mark.parametrize("name", RENDERS)
def test_gpu_and_checkpoint(name):
    spec, _ = pod(name)
    container = server(spec)
    options = serve_options(container)
    limits = container["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    if name == "cpu":  # the tiny default checkpoint, built at start: no GPU, no checkpoint volume
        assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in container["resources"]["requests"]
        assert options.checkpoint is None
        assert not [v for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert env[EXPECT_GPU_ENV] == "0"
        return
    # One GPU per rank: serve --parallel's ranks are the pod's GPUs (one without it).
    assert limits["nvidia.com/gpu"] == Parallel.parse(options.parallel).world == (8 if name == "multi-gpu" else 1)
    assert env[EXPECT_GPU_ENV] == "1"
    if name == "kserve":
        storage = one(name, "InferenceService")["spec"]["predictor"]["model"]["storageUri"]
        claim, _, folder = storage.removeprefix("pvc://").partition("/")
        assert claim == CHECKPOINT_CLAIM and options.checkpoint == KSERVE_MODEL_DIR
        # The same folder of the same volume as the plain deployment's checkpoint.
        base = pod("base")[0]
        base_checkpoint = serve_options(server(base)).checkpoint
        assert Path(volume(base, base_checkpoint)[0]["mountPath"], folder) == Path(base_checkpoint)
        return
    mount, found = volume(spec, options.checkpoint)
    assert mount["readOnly"] is True
    assert found["persistentVolumeClaim"] == {"claimName": CHECKPOINT_CLAIM, "readOnly": True}
    if name in ("gpu", "multi-gpu"):
        tolerations = {t["key"] for t in spec["tolerations"]}
        assert "nvidia.com/gpu" in tolerations
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        (memory,) = [e for term in terms for e in term["matchExpressions"] if e["key"] == "nvidia.com/gpu.memory"]
        assert memory["operator"] == "Gt" and int(memory["values"][0]) >= 79_000  # MiB: 80 GB class and up


# --- Configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_limits_and_lora_files_parse_as_serve_reads_them(name, tmp_path):
    spec, _ = pod(name)
    options = serve_options(server(spec))
    mount, found = volume(spec, str(options.limits))
    assert mount["readOnly"] is True and volume(spec, str(options.loras))[1] is found
    (config_map,) = [c for c in objects(name, "ConfigMap") if c["metadata"]["name"] == found["configMap"]["name"]]
    files = config_map["data"]
    assert set(files) == {options.limits.name, options.loras.name}

    values = json.loads(files[options.limits.name])
    known = {f for f in inspect.signature(Limits).parameters}
    assert values and set(values) <= known, set(values) - known
    (tmp_path / "limits.json").write_text(files[options.limits.name])
    limits = Limits.from_file(tmp_path / "limits.json")
    assert {key: getattr(limits, key) for key in values} == values  # every value taken, none ignored
    assert Limits.from_mapping({key: str(value) for key, value in values.items()}) == limits

    (tmp_path / "loras.json").write_text(files[options.loras.name])
    allow = AllowList.from_file(tmp_path / "loras.json")
    assert allow.root == Path("/models/loras") and allow.problems() == {}


def test_overlays_differ_where_they_should():
    gpu, base = one("gpu", "HorizontalPodAutoscaler")["spec"], one("base", "HorizontalPodAutoscaler")["spec"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (2, 8) and base["maxReplicas"] < gpu["maxReplicas"]
    # The HPA owns the replica count wherever there is one; the cpu overlay has none and one pod.
    assert "replicas" not in one("gpu", "Deployment")["spec"] and "replicas" not in one("base", "Deployment")["spec"]
    assert one("cpu", "Deployment")["spec"]["replicas"] == 1
    multi = one("multi-gpu", "HorizontalPodAutoscaler")["spec"]
    assert (multi["minReplicas"], multi["maxReplicas"]) == (1, 4), "a pod is a whole 8-GPU node"
    cpu_limits = json.loads(one("cpu", "ConfigMap")["data"]["limits.json"])
    gpu_limits = json.loads(one("gpu", "ConfigMap")["data"]["limits.json"])
    assert cpu_limits["max_area"] < gpu_limits["max_area"]


@pytest.mark.parametrize("name", ["base", "gpu", "multi-gpu", "cpu"])
def test_services_and_disruption_budget_select_the_pods(name):
    template = one(name, "Deployment")["spec"]["template"]
    labels = template["metadata"]["labels"]
    options = serve_options(server(template["spec"]))
    exposed = {}
    for service in objects(name, "Service"):
        assert service["spec"]["selector"].items() <= labels.items()
        container_ports = {p["name"]: p["containerPort"] for p in server(template["spec"])["ports"]}
        for port in service["spec"]["ports"]:
            assert container_ports[port["targetPort"]] == port["port"]
            exposed.setdefault(port["port"], port.get("appProtocol"))
    assert exposed == {options.http_port: "http", options.grpc_port: "grpc", options.metrics_port: "http"}
    (headless,) = [s for s in objects(name, "Service") if s["spec"].get("clusterIP") == "None"]
    assert [p["port"] for p in headless["spec"]["ports"]] == [options.grpc_port]
    budget = one(name, "PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items() and budget["maxUnavailable"] == 1


# --- Metrics: autoscaler, adapter, dashboard ---------------------------------------------------


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric, label names matched) of each vector selector in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values out
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations out
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    found = []
    for match in re.finditer(r"(?<![\w.$])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", expr):
        metric, matchers, call = match.groups()
        if call or metric in {"and", "or", "unless", "bool", "offset"}:
            continue  # a function or an aggregation, or an operator
        found.append((metric, set(re.findall(r"(\w+)\s*[=!]~?", matchers or ""))))
    return found


def grouping_labels(expr: str) -> set[str]:
    groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
    return {label.strip() for group in groups for label in group.split(",")}


def metric_labels(series: str) -> set[str]:
    """The label names a series may carry; fails for any name outside the expected ones."""
    for prefix, labels in TRITON_LABELS.items():
        if series.startswith(prefix):
            return labels
    base = re.sub(r"_(bucket|count|sum)$", "", series) if series.endswith(("_bucket", "_count", "_sum")) else series
    assert base in WAN_METRICS and (base == series or base in HISTOGRAMS), f"unknown metric {series}"
    return WAN_METRICS[base] | ({"le"} if series.endswith("_bucket") else set())


def check_promql(expr: str) -> set[str]:
    found = selectors(expr)
    assert found, expr
    allowed = set(SCRAPE_LABELS)
    for series, matched in found:
        labels = metric_labels(series)
        assert matched <= labels | SCRAPE_LABELS, f"{series} has no label {matched - labels - SCRAPE_LABELS}: {expr}"
        allowed |= labels
    assert grouping_labels(expr) <= allowed, f"grouping by {grouping_labels(expr) - allowed}: {expr}"
    return {series for series, _ in found}


def adapter_metrics() -> dict[str, str]:
    """Custom metric name served by the Prometheus adapter -> the Prometheus series behind it."""
    values = yaml.safe_load((DEPLOY / "kubernetes/prometheus-adapter/rules.yaml").read_text())
    assert values["rules"]["default"] is False
    served = {}
    for rule in values["rules"]["custom"]:
        ((series, matched),) = selectors(rule["seriesQuery"])
        metric_labels(series)
        assert matched == {"namespace", "pod"}
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert re.fullmatch(rule["name"]["matches"], series)
        exposed = rule["name"].get("as") or series
        assert "$" not in exposed  # a literal name, not a template of the match
        served[exposed] = series
        assert "<<.Series>>" in rule["metricsQuery"] and "by (<<.GroupBy>>)" in rule["metricsQuery"]
    return served


@pytest.mark.parametrize("name", ["base", "gpu", "multi-gpu", "kserve"])
def test_autoscaler_metrics_are_served_by_the_adapter(name):
    hpa = one(name, "HorizontalPodAutoscaler")["spec"]
    served = adapter_metrics()
    names = []
    for metric in hpa["metrics"]:
        assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
        names.append(metric["pods"]["metric"]["name"])
    assert set(names) <= set(served), set(names) - set(served)
    assert {served[n] for n in names} == {"wan_requests_in_flight", "nv_inference_pending_request_count"}
    if name != "kserve":
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "wan-triton"}
    # A pod that is removed cuts its running jobs short after the drain: scale down slowly.
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 600


def dashboard_queries(dashboard: dict) -> list[str]:
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(re.fullmatch(r"label_values\((.*), \w+\)", variable["definition"]).group(1))
    return queries


def test_dashboard_queries_only_exported_metrics():
    dashboard = json.loads((DEPLOY / "grafana/wan-triton.json").read_text())
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    used = set()
    for expr in dashboard_queries(dashboard):
        used |= check_promql(expr)
    # Every metric the models export is on the dashboard, and Triton's queue and GPU ones.
    shown = {re.sub(r"_(bucket|count|sum)$", "", s) if s.startswith("wan_") else s for s in used}
    assert set(WAN_METRICS) <= shown, set(WAN_METRICS) - shown
    assert {"nv_inference_pending_request_count", "nv_gpu_utilization", "nv_gpu_memory_used_bytes"} <= shown
    quantiles = [e for e in dashboard_queries(dashboard) if "wan_request_duration_seconds_bucket" in e]
    assert {re.match(r"histogram_quantile\((0\.\d+)", e).group(1) for e in quantiles} == {"0.5", "0.95", "0.99"}

    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_promql_check_catches_unknown_metrics_and_labels():
    check_promql('sum by (stage) (rate(wan_stage_duration_seconds_bucket{namespace=~"$ns"}[5m]))')
    for wrong in (
        "sum(rate(wan_requests_total[5m]))",  # no such metric
        "sum by (gpu_uuid) (rate(wan_stage_duration_seconds_count[5m]))",  # a label it does not carry
        'wan_videos_total{stage="denoiser"}',
        "wan_requests_in_flight_bucket",
    ):
        with pytest.raises(AssertionError):
            check_promql(wrong)


# --- model_analyzer ----------------------------------------------------------------------------


def test_model_analyzer_profiles_models_of_the_repository(tmp_path):
    config = yaml.safe_load((DEPLOY / "model_analyzer/config.yaml").read_text())
    repository = PROJECT / "model_repository"
    models = [*config["profile_models"], *config["bls_composing_models"]]
    assert "denoiser" in config["bls_composing_models"] and len(config["bls_composing_models"]) <= 4
    for model in models:
        assert (repository / model / "config.pbtxt").is_file(), model
    assert config["run_config_search_mode"] == "quick"  # the only search Model Analyzer has for BLS
    assert (config["run_config_search_min_instance_count"], config["run_config_search_max_instance_count"]) == (1, 2)
    assert config["triton_launch_mode"] in {"local", "docker", "c_api"}  # remote cannot change configs
    assert set(config["triton_server_environment"]) >= {CHECKPOINT_ENV, STAGE_KEY_ENV}

    # perf_analyzer's input data: only the entry's inputs, valid under the production limits.
    data = json.loads((PROJECT / config["perf_analyzer_flags"]["input-data"]).read_text())["data"]
    (tmp_path / "limits.json").write_text(one("gpu", "ConfigMap")["data"]["limits.json"])
    limits = Limits.from_file(tmp_path / "limits.json")
    names = {spec.name for spec in inputs_of(TEXT_TO_VIDEO)}
    for entry in data:
        assert set(entry) <= names and all(len(values) == 1 for values in entry.values())
        request = validate({key: values[0] for key, values in entry.items()}, limits=limits)
        assert request.num_inference_steps <= 8 and request.num_frames <= 33  # small: seconds per request


# --- What is exposed, and what stands in front (docs/SECURITY.md) ------------------------------


def megabytes(size: str) -> int:
    """An nginx size ("210m") in bytes."""
    return int(size.rstrip("mM")) << 20


def test_the_ingress_limits_request_size_and_exposes_only_grpc():
    """R29: tritonserver 2.51 takes 2 GiB messages and has no flag to lower it, so the limit is in
    front: at least the largest media a request may carry (the pod's limits), far below 2 GiB."""
    ingress = one("gpu", "Ingress")
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    limits = Limits.from_mapping(
        {k: str(v) for k, v in json.loads(one("gpu", "ConfigMap")["data"]["limits.json"]).items()}
    )
    largest = limits.max_request_media_bytes  # all media of one request (VACE, Animate: several videos)
    assert largest < megabytes(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) < 1 << 30
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "wan-triton", "port": {"name": "grpc"}}]
    assert not objects("cpu", "Ingress"), "the development overlay stays inside the cluster"


@pytest.mark.parametrize("name", ["base", "gpu", "multi-gpu", "cpu"])
def test_only_prometheus_reaches_the_metrics_port(name):
    policy = one(name, "NetworkPolicy")["spec"]
    labels = one(name, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    open_to_all = [rule for rule in policy["ingress"] if "from" not in rule]
    assert [p["port"] for rule in open_to_all for p in rule["ports"]] == ["grpc", "http"]
    (metrics,) = [rule for rule in policy["ingress"] if "from" in rule]
    assert [p["port"] for p in metrics["ports"]] == ["metrics"]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


# --- The OpenAI Videos API (components/api) ------------------------------------------------------


def api_container(name: str = API_RENDER) -> dict:
    (deployment,) = [d for d in objects(name, "Deployment") if d["metadata"]["name"] == "wan-triton-api"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def api_options(container: dict):
    """The container's command and args as the real `wan-triton api` parses them."""
    assert container["command"] == ["wan-triton", "api"]
    options = parser().parse_args(["api", *container["args"]])
    for arg in container["args"]:
        assert re.fullmatch(r"--[\w-]+=.+", arg), arg
    return options


def test_the_api_component_validates_and_leaves_the_servers_as_they_are():
    assert "PersistentVolumeClaim" in validated_kinds(API_RENDER)
    added = [doc for doc in rendered(API_RENDER) if doc not in rendered("gpu")]
    assert {doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in added} == {"api"}
    assert len(rendered(API_RENDER)) == len(rendered("gpu")) + len(added)


def test_the_api_reaches_the_servers_and_serves_its_port():
    container, options = api_container(), api_options(api_container())
    service, port = options.triton.split(":")
    (grpc,) = [s for s in objects(API_RENDER, "Service") if s["metadata"]["name"] == service]
    assert int(port) in [p["port"] for p in grpc["spec"]["ports"] if p["name"] == "grpc"]
    assert options.host == "0.0.0.0" and options.api_keys  # reachable in the cluster, so keys are required
    assert [p["containerPort"] for p in container["ports"]] == [options.port]
    (api,) = [s for s in objects(API_RENDER, "Service") if s["metadata"]["name"] == "wan-triton-api"]
    assert [(p["port"], p["targetPort"]) for p in api["spec"]["ports"]] == [(options.port, "api")]
    routes = {route.path for route in ROUTES}
    for kind in ("readiness", "liveness"):
        assert container[f"{kind}Probe"]["httpGet"]["path"] in routes
    (policy,) = [p for p in objects(API_RENDER, "NetworkPolicy") if p["metadata"]["name"] == "wan-triton-api"]
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["api"]


def test_the_api_keeps_its_jobs_on_its_volume_and_runs_unprivileged():
    (deployment,) = [d for d in objects(API_RENDER, "Deployment") if d["metadata"]["name"] == "wan-triton-api"]
    spec, container = deployment["spec"]["template"]["spec"], api_container()
    options = api_options(container)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"  # SQLite
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    data = volumes[mounts[str(options.data_dir)]]
    assert data["persistentVolumeClaim"]["claimName"] in [
        c["metadata"]["name"] for c in objects(API_RENDER, "PersistentVolumeClaim")
    ]
    assert "secret" in volumes[mounts[str(options.api_keys.parent)]]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["automountServiceAccountToken"] is False
