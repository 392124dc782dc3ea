"""The Kubernetes profile (deploy/k8s/): the instance loads from it with dagster-k8s installed, its
launcher starts a pod per run with the settings and secrets and no volume of ours, the run queue
keeps the deployment's limits, and Dagster's storage is PostgreSQL. No cluster is needed: the
launcher is pointed at a dummy kubeconfig and never called."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import LaunchRunContext

from sync_pipeline.defs.runs import LEASE_TAG, lease_tags
from sync_pipeline.domain import EntityType
from sync_pipeline.settings import REPO_ROOT

dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (the test extra has it)")

PROFILE = REPO_ROOT / "deploy" / "k8s" / "dagster.yaml"
ENV_CONFIGMAP = REPO_ROOT / "deploy" / "k8s" / "env-configmap.yaml"
IMAGE = "registry.example.com/sync-pipeline:test"
DUMMY_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: dummy
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: dummy
  user: {token: dummy-token}
contexts:
- name: dummy
  context: {cluster: dummy, user: dummy}
current-context: dummy
"""


def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


@pytest.fixture
def k8s_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str):
    """The profile in a temporary DAGSTER_HOME, changed only where it must be outside a cluster:
    the launcher reads a dummy kubeconfig instead of the pod's service account."""
    config = profile()
    kubeconfig = tmp_path / "kubeconfig.yaml"
    kubeconfig.write_text(DUMMY_KUBECONFIG)
    config["run_launcher"]["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    monkeypatch.setenv("SYNC_MAX_CONCURRENT_SYNCS", "4")
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_the_committed_profile_is_the_in_cluster_one_with_no_volume():
    config = profile()
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["load_incluster_config"] is True and "kubeconfig_file" not in launcher["config"]
    assert not {"volumes", "volume_mounts"} & set(launcher["config"])
    assert "volumes" not in str(launcher["config"].get("run_k8s_config", {}))
    # the same queue as the plain production profile: one place to change a limit is two files
    assert config["run_queue"] == yaml.safe_load((REPO_ROOT / "deploy" / "dagster.yaml").read_text())["run_queue"]


def test_the_instance_keeps_its_storage_in_postgres(k8s_instance):
    assert type(k8s_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(k8s_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(k8s_instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert k8s_instance.run_monitoring_enabled


def test_the_run_queue_allows_the_deployments_cap_and_one_run_per_merchant_and_type(k8s_instance):
    queue = k8s_instance.get_concurrency_config().run_queue_config
    assert queue.max_concurrent_runs == 4  # SYNC_MAX_CONCURRENT_SYNCS
    assert queue.tag_concurrency_limits == [
        {"key": LEASE_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]


def test_the_launcher_starts_run_pods_with_the_settings_and_secrets(k8s_instance):
    launcher = k8s_instance.run_launcher
    assert isinstance(launcher, dagster_k8s.K8sRunLauncher)
    assert launcher.job_namespace == "sync-pipeline"
    assert launcher.service_account_name == "sync-pipeline-run"
    assert launcher.instance_config_map == "sync-pipeline-instance"
    assert launcher.env_config_maps == ["sync-pipeline-env"]
    assert launcher.env_secrets == ["sync-pipeline-secrets"]
    assert launcher.env_vars == []  # nothing copied from the daemon's own environment
    assert (launcher.volumes, launcher.volume_mounts) == ([], [])


def test_a_run_is_one_pod_sized_for_one_sync_with_no_volume_and_no_secret_in_its_spec(
    k8s_instance, monkeypatch, postgres_url
):
    """What the launcher would ask the cluster for, captured instead of sent."""
    launcher = k8s_instance.run_launcher
    created = []
    monkeypatch.setattr(
        launcher, "_api_client",
        SimpleNamespace(create_namespaced_job_with_retries=lambda body, namespace: created.append((body, namespace))),
    )
    recon = ReconstructableRepository.for_module(
        "sync_pipeline.defs", "defs", working_directory=str(REPO_ROOT), container_image=IMAGE
    ).get_reconstructable_job("sync_products")
    run = k8s_instance.create_run_for_job(
        recon.get_definition(), tags=lease_tags("acme", EntityType.PRODUCT), job_code_origin=recon.get_python_origin()
    )
    launcher.launch_run(LaunchRunContext(dagster_run=run, workspace=None))

    [(job, namespace)] = created
    assert namespace == "sync-pipeline"
    pod = job.spec.template.spec
    [container] = pod.containers
    assert pod.service_account_name == "sync-pipeline-run"
    assert container.image == IMAGE
    assert container.resources.requests == {"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"}
    assert container.resources.limits == {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "4Gi"}
    assert [s.config_map_ref.name for s in container.env_from if s.config_map_ref] == ["sync-pipeline-env"]
    assert [s.secret_ref.name for s in container.env_from if s.secret_ref] == ["sync-pipeline-secrets"]
    assert not pod.volumes and not container.volume_mounts
    # The pod gets the instance in its command, with the storage's URL named, not given: the
    # Secret supplies it in the pod, so no password is in the Job's spec.
    command = json.dumps(container.args)
    assert container.args[:3] == ["dagster", "api", "execute_run"]
    assert "DAGSTER_PG_URL" in command and postgres_url not in command


def test_the_settings_configmap_holds_no_secret_and_what_every_pod_needs():
    data = yaml.safe_load(ENV_CONFIGMAP.read_text())["data"]
    assert data["SYNC_MAX_CONCURRENT_SYNCS"] == "4"  # dagster.yaml's run queue reads it in every pod
    assert data["SYNC_EXECUTOR"] == "in_process"  # the pod is the worker
    secrets = {"SYNC_SECRET_KEY", "SYNC_STATE_URL", "DAGSTER_PG_URL", "PRODUCT_SERVICE_TOKEN", "GATEWAY_TOKEN",
               "SYNC_API_TOKEN", "SYNC_API_READ_TOKEN", "SYNC_OPERATOR_TOKEN"}
    assert not secrets & set(data)
    assert not [name for name in data if "TOKEN" in name or "SECRET" in name or "PASSWORD" in name]
