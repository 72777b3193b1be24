"""deploy/kubernetes/: every manifest validates against the pinned Kubernetes schemas (kubernetes-validate,
strict: unknown fields are errors), and the pieces fit together and fit Laneway: the commands and
settings they name exist, and KEDA scales each GPU class on the metric /metrics really exports."""

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from django.conf import settings
from django.core.management import get_commands
from prometheus_client.parser import text_string_to_metric_families

from lanes.models import Lane

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the oldest minor release still supported upstream when this was written


def kustomization() -> dict:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def resources() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    return docs


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in resources() if doc["kind"] == kind}


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


def argv(container: dict) -> list[str]:
    return container["command"] + container.get("args", [])


def option(args: list[str], name: str) -> str:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} not in {args}")


def test_the_kustomization_lists_every_manifest_file():
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


# KEDA's custom resources have no Kubernetes schema: they are checked field by field below.
@pytest.mark.parametrize(
    "doc",
    [doc for doc in resources() if not doc["apiVersion"].startswith("keda.sh/")],
    ids=lambda doc: f"{doc['kind']}/{doc['metadata']['name']}",
)
def test_each_manifest_validates_strictly_against_the_pinned_kubernetes_schema(doc):
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == "1.33"


def test_a_manifest_with_a_mistake_is_refused():
    """The validation above can fail: a misspelt field and a wrong type are both errors."""
    web = of_kind("Deployment")["laneway-web"]
    typo = yaml.safe_load(yaml.safe_dump(web))
    typo["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)
    wrong = yaml.safe_load(yaml.safe_dump(web))
    wrong["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSION, strict=True)


def test_every_setting_the_manifests_give_is_one_laneway_reads():
    read = set(re.findall(r"""env\w*\(\s*["']([A-Z_]+)["']""", (ROOT / "console" / "settings.py").read_text()))
    read |= set(
        re.findall(r"""os\.environ\.get\(\s*["']([A-Z_]+)["']""", (ROOT / "console" / "settings.py").read_text())
    )
    given = set(of_kind("ConfigMap")["laneway-settings"]["data"])
    given |= {line.split("=", 1)[0] for line in (DEPLOY / "secrets.env.example").read_text().splitlines() if line}
    for workload in [*of_kind("Deployment").values(), *of_kind("Job").values()]:
        for container in containers(workload):
            given |= {env["name"] for env in container.get("env", [])}
    assert given - read == set()
    assert {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "METRICS_TOKEN"} <= given


def test_every_pod_gets_the_settings_and_secrets_and_claims_that_exist():
    generated = {gen["name"] for gen in kustomization()["secretGenerator"]}
    config_maps, claims = set(of_kind("ConfigMap")), set(of_kind("PersistentVolumeClaim"))
    for workload in [*of_kind("Deployment").values(), *of_kind("Job").values()]:
        for container in containers(workload):
            sources = container["envFrom"]
            assert {s["configMapRef"]["name"] for s in sources if "configMapRef" in s} <= config_maps
            assert {s["secretRef"]["name"] for s in sources if "secretRef" in s} <= generated
            assert len(sources) == 2, workload["metadata"]["name"]
        volumes = workload["spec"]["template"]["spec"].get("volumes", [])
        assert {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v} <= claims


def test_the_commands_are_laneways_own():
    commands = get_commands()
    queues = {
        settings.VERIFY_QUEUE, settings.HOSTED_QUEUE, settings.WEBHOOK_QUEUE, settings.HOUSEKEEPING_QUEUE,
    }  # fmt: skip
    job = of_kind("Job")["laneway-migrate"]
    assert argv(containers(job)[0]) == ["python", "manage.py", "migrate", "--noinput"]
    for name, workload in of_kind("Deployment").items():
        args = argv(containers(workload)[0])
        if args[:2] == ["python", "manage.py"]:
            assert args[2] in commands, name
        elif args[0] == "celery":
            assert args[1] == "--app=console" and args[2] in ("worker", "beat"), name
            if args[2] == "worker":
                assert set(option(args, "--queues").split(",")) <= queues, name
        else:
            assert args[:2] == ["uvicorn", "console.asgi:application"], name


@pytest.mark.django_db
def test_gpu_workers_ask_for_one_gpu_on_their_class_of_node_and_serve_real_lanes(demo_lanes):
    lanes = set(Lane.objects.values_list("name", flat=True))
    gpu = {name: d for name, d in of_kind("Deployment").items() if "gpu_worker" in argv(containers(d)[0])}
    assert len(gpu) >= 2
    served: list[str] = []
    for name, deployment in gpu.items():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["nodeSelector"]["nvidia.com/gpu.product"], name
        [container] = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1, name
        assert {"name": "LANEWAY_DEVICE", "value": "cuda"} in container["env"]
        names = option(argv(container), "--lanes").split(",")
        assert set(names) <= lanes, name
        served += names
    assert len(served) == len(set(served)), "a lane is served by two GPU classes: their autoscalers would fight"


def test_beat_is_exactly_one_pod_replaced_by_recreate():
    beats = [
        d for d in of_kind("Deployment").values() if argv(containers(d)[0])[:3] == ["celery", "--app=console", "beat"]
    ]
    [beat] = beats
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}
    assert beat["metadata"]["name"] not in of_kind("ScaledObject")


def test_disruption_budgets_and_services_select_real_pods():
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind("Deployment").values()]

    def selects(selector: dict) -> bool:
        return any(selector.items() <= labels.items() for labels in pod_labels)

    budgets = of_kind("PodDisruptionBudget")
    assert budgets and all(selects(b["spec"]["selector"]["matchLabels"]) for b in budgets.values())
    services = of_kind("Service")
    assert services and all(selects(s["spec"]["selector"]) for s in services.values())
    beat_labels = of_kind("Deployment")["laneway-beat"]["spec"]["template"]["metadata"]["labels"]
    assert not any(b["spec"]["selector"]["matchLabels"].items() <= beat_labels.items() for b in budgets.values())


@pytest.mark.django_db
def test_the_web_probes_hit_healthz_and_it_answers_them(client, settings):
    config = of_kind("ConfigMap")["laneway-settings"]["data"]
    settings.ALLOWED_HOSTS = config["ALLOWED_HOSTS"].split(",")
    [container] = containers(of_kind("Deployment")["laneway-web"])
    for probe in (container["readinessProbe"], container["livenessProbe"]):
        get = probe["httpGet"]
        assert get["port"] == "http" and any(p["name"] == "http" for p in container["ports"])
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        response = client.get(get["path"], headers=headers)
        assert response.status_code == 200, response.content
        assert response.json()["status"] == "ok"


@pytest.mark.django_db
def test_keda_scales_each_gpu_class_on_the_desired_workers_laneway_exports(admin_client, demo_lanes):
    exported = {f.name: f for f in text_string_to_metric_families(admin_client.get("/metrics").content.decode())}
    deployments = of_kind("Deployment")
    scaled = of_kind("ScaledObject")
    gpu = {name for name, d in deployments.items() if "gpu_worker" in argv(containers(d)[0])}
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled.values()} == gpu
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        [trigger] = spec["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http") and float(meta["threshold"]) > 0
        match = re.fullmatch(r'sum\((\w+)\{lane=~"([\w|-]+)"\}\)', meta["query"])
        assert match, meta["query"]
        metric, lanes = match.group(1), match.group(2).split("|")
        assert metric == "laneway_lane_desired_workers" and metric in exported
        # The query sums exactly the lanes its Deployment serves, and /metrics has a series for each.
        assert lanes == option(argv(containers(target)[0]), "--lanes").split(","), name
        assert set(lanes) <= {s.labels["lane"] for s in exported[metric].samples}


def test_the_secrets_example_is_complete_and_the_real_file_is_ignored():
    assert (DEPLOY / ".gitignore").read_text().split() == ["secrets.env"]
    example = dict(line.split("=", 1) for line in (DEPLOY / "secrets.env.example").read_text().splitlines() if line)
    assert example["DATABASE_URL"].startswith("postgres://") and example["REDIS_URL"].startswith("redis://")
    assert set(example) == {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "METRICS_TOKEN"}
