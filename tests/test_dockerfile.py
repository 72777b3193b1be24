"""The Dockerfile builds the image `laneway` that deploy/kubernetes/ runs. No Docker daemon here, so
this checks what can be checked without one: the image name, the commands the manifests give exist
in the image (manage.py commands, the Celery app, the ASGI application, their executables), and the
Dockerfile's WORKDIR, USER, port and default command agree with the manifests."""

import fnmatch
import json
import shlex
from pathlib import Path

from celery import Celery
from celery.app.utils import find_app
from django.core.management import get_commands
from uvicorn.importer import import_from_string

from tests.test_kubernetes_manifests import argv, containers, kustomization, of_kind

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    lines, pending = [], ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        lines.append((keyword.upper(), args.strip()))
        pending = ""
    return lines


def last(keyword: str) -> str:
    found = [args for kw, args in instructions() if kw == keyword]
    assert found, f"the Dockerfile has no {keyword}"
    return found[-1]


def workloads() -> list[dict]:
    return [*of_kind("Deployment").values(), *of_kind("Job").values()]


def installed() -> set[str]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {line.split("==")[0].split("[")[0].lower() for line in lines if line and not line.startswith("#")}


def test_every_pod_runs_the_image_laneway_and_the_readme_builds_it_by_that_name():
    images = {c["image"] for workload in workloads() for c in containers(workload)}
    assert images == {"laneway"}
    assert [image["name"] for image in kustomization()["images"]] == ["laneway"]
    assert "docker build -t laneway ." in (ROOT / "README.md").read_text()


def test_it_is_python_3_11_slim_with_the_requirements_installed():
    assert last("FROM") == "python:3.11-slim"
    steps = instructions()
    copy_requirements = steps.index(("COPY", "requirements.txt ."))
    assert steps[copy_requirements + 1] == ("RUN", "pip install -r requirements.txt")


def test_every_command_the_manifests_run_exists_in_the_project():
    commands, packages = get_commands(), installed()
    for workload in workloads():
        for container in containers(workload):
            args, name = argv(container), workload["metadata"]["name"]
            if args[0] == "python":
                assert args[1] == "manage.py" and (ROOT / "manage.py").exists(), name
                assert args[2] in commands, f"{name}: no manage.py command {args[2]}"
            elif args[0] == "celery":
                assert "celery" in packages
                app = find_app(args[1].removeprefix("--app="))  # what `celery --app=console` loads
                assert isinstance(app, Celery) and app.main == "laneway", name
            else:
                assert args[0] == "uvicorn" and "uvicorn" in packages, name
                assert callable(import_from_string(args[1])), name


def test_the_code_sits_in_workdir_and_no_volume_hides_it():
    workdir = last("WORKDIR")
    steps = instructions()
    assert steps.index(("COPY", ". .")) > steps.index(("WORKDIR", workdir))  # manage.py lands in WORKDIR
    for workload in workloads():
        for container in containers(workload):
            for mount in container.get("volumeMounts", []):
                path = mount["mountPath"]
                assert not workdir.startswith(path) and not path.startswith(workdir), (path, workdir)


def test_it_runs_as_a_numeric_non_root_user_that_owns_the_mounted_paths():
    user, _, group = last("USER").partition(":")
    assert user.isdigit() and int(user) != 0 and (not group or int(group) != 0)
    setup = " ".join(args for kw, args in instructions() if kw == "RUN")
    assert f"--uid {user}" in setup
    home = setup.split("--home-dir ", 1)[1].split()[0]
    mounted = {m["mountPath"] for w in workloads() for c in containers(w) for m in c.get("volumeMounts", [])}
    assert mounted == {home, "/media", "/models"}
    assert "mkdir -p /media /models" in setup and "chown laneway:laneway /media /models" in setup


def test_the_settings_it_gives_are_laneways_and_agree_with_the_manifests():
    given = dict(pair.split("=", 1) for pair in shlex.split(last("ENV")))
    config = of_kind("ConfigMap")["laneway-settings"]["data"]
    assert given["LANEWAY_VAR_DIR"] == config["LANEWAY_VAR_DIR"]
    settings_text = (ROOT / "console" / "settings.py").read_text()
    for name in given:
        assert name.startswith(("PYTHON", "PIP_")) or f'"{name}"' in settings_text, name
    # collectstatic fills STATIC_ROOT at build time, inside the code's folder (no volume hides it).
    assert given["STATIC_ROOT"].startswith(last("WORKDIR") + "/")
    assert any("manage.py collectstatic --noinput" in args for kw, args in instructions() if kw == "RUN")


def test_the_port_and_default_command_are_the_web_deployments():
    [web] = containers(of_kind("Deployment")["laneway-web"])
    assert last("EXPOSE") == str(web["ports"][0]["containerPort"])
    assert json.loads(last("CMD")) == argv(web)
    assert f"--port={last('EXPOSE')}" in argv(web)


def test_the_build_context_leaves_out_local_state_and_secrets_but_not_the_code():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path, p.removeprefix("**/")) for p in patterns)

    for path in (".git", ".venv", "var", "deploy/kubernetes/secrets.env", "staticfiles"):
        assert ignored(path), path
    kept = ["manage.py", "requirements.txt", "static", "templates"]
    for path in [*kept, *(p.name for p in ROOT.iterdir() if (p / "__init__.py").exists())]:
        assert not ignored(path), path
