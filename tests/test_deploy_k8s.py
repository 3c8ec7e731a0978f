"""The Kubernetes manifests and the Dockerfile agree with the Kubernetes schemas and with the app.

Every manifest is validated, strictly, against the schemas kubernetes-validate ships for an older
and for the newest Kubernetes it knows; then the values that must match something else are
checked against it: probe paths against the app's routes, ports and env names against the
settings model and the agent's options, claims and the Service against the other manifests.
"""

from __future__ import annotations

import shlex
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from bcmanager import __version__
from bcmanager.agent.settings import ENV_PREFIX, AgentSettings
from bcmanager.cli.serve import exposure_refusal
from bcmanager.http.app import create_app
from bcmanager.settings import Settings

REPO = Path(__file__).resolve().parent.parent
K8S = REPO / "deploy" / "k8s"
OLDEST_KUBERNETES = "1.28.0"
AGENT_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in AgentSettings.model_fields}
REQUIRED_AGENT_ENV = {"BCM_AGENT_MANAGER", "BCM_AGENT_ENGINE_ID", "BCM_AGENT_COMMAND"}

Manifest = dict[str, Any]


def kustomization() -> Manifest:
    loaded: Manifest = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def manifests() -> list[Manifest]:
    return [yaml.safe_load((K8S / name).read_text()) for name in kustomization()["resources"]]


def manifest(kind: str, name: str) -> Manifest:
    for candidate in manifests():
        if candidate["kind"] == kind and candidate["metadata"]["name"] == name:
            return candidate
    raise AssertionError(f"no {kind} {name} in {K8S}")


def only_container(deployment: Manifest) -> Manifest:
    containers: list[Manifest] = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def container_port(container: Manifest, port: int | str) -> int:
    """A probe's or Service's port, by number or by the container port's name."""
    for declared in container["ports"]:
        if port in (declared["containerPort"], declared.get("name")):
            number: int = declared["containerPort"]
            return number
    raise AssertionError(f"port {port!r} is not a port of container {container['name']}")


def setting_env_names() -> set[str]:
    return {f"BCM_{name.upper()}" for name in Settings.model_fields}


def mounts(deployment: Manifest) -> dict[str, str]:
    """Claim name -> mount path, for the pod's persistent volume claims."""
    pod = deployment["spec"]["template"]["spec"]
    claims = {
        volume["name"]: volume["persistentVolumeClaim"]["claimName"]
        for volume in pod["volumes"]
        if "persistentVolumeClaim" in volume
    }
    return {
        claims[mount["name"]]: mount["mountPath"]
        for mount in only_container(deployment)["volumeMounts"]
        if mount["name"] in claims
    }


def test_the_kustomization_lists_every_manifest_in_the_folder() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("kubernetes_version", [OLDEST_KUBERNETES, "latest"])
def test_every_manifest_is_valid_against_the_kubernetes_schema(kubernetes_version: str) -> None:
    version = (
        f"{kubernetes_validate.latest_version()}.0"
        if kubernetes_version == "latest"
        else kubernetes_version
    )
    for resource in manifests():
        kubernetes_validate.validate(resource, version, strict=True)


def test_the_manager_is_one_replica_that_is_never_rolled_alongside_another() -> None:
    spec = manifest("Deployment", "bcmanager")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_the_manager_probes_ask_the_routes_that_say_alive_and_ready() -> None:
    container = only_container(manifest("Deployment", "bcmanager"))
    probes = [container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")]
    startup = container["startupProbe"]["httpGet"]
    schema = create_app(Settings(input_dir=Path("in"), output_dir=Path("out"))).openapi()
    app_routes = {
        (path, method.upper())
        for path, operations in schema["paths"].items()
        for method in operations
    }

    assert [probe["path"] for probe in probes] == ["/heartbeat", "/ready"]
    assert startup == probes[0]
    assert {(probe["path"], "GET") for probe in probes} <= app_routes
    port = Settings.model_fields["port"].default
    for probe in probes:
        assert container_port(container, probe["port"]) == port


def test_the_manager_listens_where_the_service_and_agents_call_it() -> None:
    deployment = manifest("Deployment", "bcmanager")
    container = only_container(deployment)
    settings = manifest("ConfigMap", "bcmanager-settings")["data"]
    service = manifest("Service", "bcmanager")
    (service_port,) = service["spec"]["ports"]
    manager_url = urlsplit(
        env_values(manifest("Deployment", "bcmanager-agent"))["BCM_AGENT_MANAGER"]
    )

    assert settings["BCM_HOST"] == "0.0.0.0"
    assert container_port(container, service_port["targetPort"]) == int(settings["BCM_PORT"])
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert (manager_url.hostname, manager_url.port) == (
        service["metadata"]["name"],
        service_port["port"],
    )


def env_values(deployment: Manifest) -> dict[str, str]:
    return {
        variable["name"]: variable.get("value", "")
        for variable in only_container(deployment).get("env", [])
    }


def test_every_manager_setting_is_one_the_app_reads_and_valid_for_it() -> None:
    deployment = manifest("Deployment", "bcmanager")
    (source,) = only_container(deployment)["envFrom"]
    settings = manifest("ConfigMap", source["configMapRef"]["name"])["data"]

    assert set(settings) <= setting_env_names()
    parsed = Settings.model_validate(
        {name.removeprefix("BCM_").lower(): value for name, value in settings.items()}
    )
    run_mount = mounts(deployment)["bcmanager-run"]
    assert parsed.input_dir.is_relative_to(run_mount)
    assert parsed.output_dir.is_relative_to(run_mount)


def test_agents_get_a_gpu_each_and_the_run_where_the_manager_has_it() -> None:
    agent = manifest("Deployment", "bcmanager-agent")
    container = only_container(agent)
    manager = manifest("Deployment", "bcmanager")
    env = env_values(agent)

    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert REQUIRED_AGENT_ENV <= set(env) <= AGENT_ENV | {"DORADO"}
    pod_name = "bcmanager-agent-7d9c8b6f5-x2kqz"  # what metadata.name gives BCM_AGENT_ENGINE_ID
    AgentSettings.model_validate(
        {
            name.removeprefix(ENV_PREFIX).lower(): value or pod_name
            for name, value in env.items()
            if name.startswith(ENV_PREFIX)
        }
    )
    assert mounts(agent)["bcmanager-run"] == mounts(manager)["bcmanager-run"]


def test_agents_run_dorado_from_its_volume_through_the_wrapper_in_the_image() -> None:
    agent = manifest("Deployment", "bcmanager-agent")
    env = env_values(agent)
    dorado_mount = mounts(agent)["dorado"]
    program, *arguments = shlex.split(env["BCM_AGENT_COMMAND"])
    copied = [rest.split() for keyword, rest in dockerfile_instructions() if keyword == "COPY"]

    assert ["deploy/dorado-batch.sh", f"/usr/local/bin/{program}"] in copied
    assert arguments[:2] == ["{input_dir}", "{output_dir}"]
    assert arguments[2].startswith(dorado_mount + "/")
    assert env["DORADO"].startswith(dorado_mount + "/")


def test_every_claim_a_pod_mounts_is_one_of_the_manifests() -> None:
    claims = {m["metadata"]["name"] for m in manifests() if m["kind"] == "PersistentVolumeClaim"}
    for name in ("bcmanager", "bcmanager-agent"):
        assert set(mounts(manifest("Deployment", name))) <= claims
    assert (
        "ReadWriteMany" in manifest("PersistentVolumeClaim", "bcmanager-run")["spec"]["accessModes"]
    )


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (keyword.upper(), rest.strip())
        for keyword, _, rest in (line.partition(" ") for line in lines)
        if keyword and not keyword.startswith("#")
    ]


def test_the_dockerfile_builds_the_image_the_manifests_name() -> None:
    instructions = dockerfile_instructions()
    values = {keyword: rest for keyword, rest in instructions}
    manager = only_container(manifest("Deployment", "bcmanager"))
    pod = manifest("Deployment", "bcmanager")["spec"]["template"]["spec"]
    agent = only_container(manifest("Deployment", "bcmanager-agent"))

    assert values["FROM"] == "python:3.11-slim"
    assert int(values["EXPOSE"]) == container_port(manager, "http")
    assert int(values["USER"]) == pod["securityContext"]["runAsUser"]
    assert yaml.safe_load(values["CMD"]) == manager["command"]
    assert manager["image"] == agent["image"] == f"bcmanager:{__version__}"
    assert kustomization()["images"] == [{"name": "bcmanager", "newTag": __version__}]
    let_in = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for keyword, rest in instructions:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                assert (REPO / source).exists(), f"Dockerfile copies {source}, which is missing"
                assert source.rstrip("/") in let_in, f".dockerignore keeps {source} out"


def secret_mounts(deployment: Manifest) -> dict[str, tuple[str, dict[str, str] | None]]:
    """Mount path -> (secret name, the keys it shows and their file names, None for all)."""
    pod = deployment["spec"]["template"]["spec"]
    secrets = {
        volume["name"]: (
            volume["secret"]["secretName"],
            {item["key"]: item["path"] for item in volume["secret"]["items"]}
            if "items" in volume["secret"]
            else None,
        )
        for volume in pod["volumes"]
        if "secret" in volume
    }
    return {
        mount["mountPath"]: secrets[mount["name"]]
        for mount in only_container(deployment)["volumeMounts"]
        if mount["name"] in secrets
    }


def test_the_manager_serves_tls_from_a_secret_that_agents_and_probes_verify_or_use() -> None:
    manager = manifest("Deployment", "bcmanager")
    agent = manifest("Deployment", "bcmanager-agent")
    container = only_container(manager)
    settings = manifest("ConfigMap", "bcmanager-settings")["data"]
    parsed = Settings.model_validate(
        {name.removeprefix("BCM_").lower(): value for name, value in settings.items()}
        | {"api_token": "from-the-secret"}
    )
    manager_secrets = secret_mounts(manager)
    (agent_ca_folder, (agent_secret, agent_items)) = next(iter(secret_mounts(agent).items()))
    ca_file = PurePosixPath(env_values(agent)["BCM_AGENT_CA_FILE"])

    assert exposure_refusal(parsed) is None  # it starts: TLS and an engine token
    for path in (settings["BCM_TLS_CERTFILE"], settings["BCM_TLS_KEYFILE"]):
        assert manager_secrets[str(PurePosixPath(path).parent)] == ("bcmanager-tls", None)
    assert {container[kind]["httpGet"]["scheme"] for kind in PROBES} == {"HTTPS"}
    assert urlsplit(env_values(agent)["BCM_AGENT_MANAGER"]).scheme == "https"
    # Agents see the certificate as their CA, and not the key.
    assert agent_secret == "bcmanager-tls" and agent_items == {"tls.crt": ca_file.name}
    assert str(ca_file.parent) == agent_ca_folder
    engine_tokens = [
        variable["valueFrom"]["secretKeyRef"]
        for deployment, name in ((manager, "BCM_API_TOKEN"), (agent, "BCM_AGENT_API_TOKEN"))
        for variable in only_container(deployment)["env"]
        if variable["name"] == name
    ]
    assert engine_tokens == [{"name": "bcmanager-token", "key": "token"}] * 2
