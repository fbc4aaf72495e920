"""Cluster files: every shipped file passes; every insecure or broken variant fails with one
clear line naming the field and the rule. Variants are derived from the shipped files."""

import pytest
import yaml

from helpers import ROOT
from raytune_suite.cluster import check_cluster_file, validate_cluster_file
from raytune_suite.errors import SpecError, SpecErrors

CLUSTER = ROOT / "cluster"
FILES = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))


def _is_launcher(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    return len(docs) == 1 and "provider" in docs[0] and "kind" not in docs[0]


LAUNCHERS = [p for p in FILES if _is_launcher(p)]
MANIFESTS = [p for p in FILES if not _is_launcher(p)]
AWS = CLUSTER / "aws-gpu.yaml"
GCP = CLUSTER / "gcp-gpu.yaml"
ONPREM = CLUSTER / "onprem.yaml"
KUBERAY = CLUSTER / "kuberay-raycluster.yaml"
COMMAND_LISTS = ("setup_commands", "head_setup_commands", "worker_setup_commands",
                 "head_start_ray_commands", "worker_start_ray_commands")


def ids(paths):
    return [p.name for p in paths]


def launcher_variant(tmp_path, source, change):
    """Load a shipped launcher file, apply ``change`` to it, write it next to the test."""
    config = yaml.safe_load(source.read_text())
    change(config)
    out = tmp_path / source.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def replace_in_commands(config, old, new):
    """Replace text in every command list; the variant must really change something."""
    count = 0
    for key in COMMAND_LISTS:
        commands = config.get(key) or []
        count += sum(old in c for c in commands)
        config[key] = [c.replace(old, new) for c in commands]
    assert count, f"{old!r} appears in no command: the variant would test nothing"


def only(problems, field):
    """The lines of ``problems`` for ``field``; fails unless every problem is about it."""
    assert problems, "the variant passed validation"
    assert {p.split(": ", 1)[0] for p in problems} == {field}, problems
    return problems


def with_field(problems, field):
    lines = [p for p in problems if p.split(": ", 1)[0] == field]
    assert lines, f"no problem for {field}: {problems}"
    return lines


# ---- shipped files ------------------------------------------------------------------------

def test_the_folder_holds_every_kind_of_cluster_file():
    assert {AWS, GCP, ONPREM} <= set(LAUNCHERS) and KUBERAY in MANIFESTS


@pytest.mark.parametrize("path", FILES, ids=ids(FILES))
def test_shipped_cluster_files_pass(path):
    assert validate_cluster_file(path) == []
    check_cluster_file(path)  # does not raise


# ---- launcher files: token authentication ---------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_token_auth_turned_off_is_caught_wherever_it_is_set(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"))
    problems = validate_cluster_file(bad)
    for field in ("head_start_ray_commands[1]", "worker_start_ray_commands[1]"):
        (line,) = with_field(problems, field)
        assert "must set RAY_AUTH_MODE=token" in line and line.endswith("got 'disabled'")
    assert {p.split(": ")[0] for p in problems} <= {
        "head_start_ray_commands[1]", "worker_start_ray_commands[1]", "setup_commands[1]"}


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_ray_start_without_auth_mode_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "export RAY_AUTH_MODE=token;", ""))
    problems = validate_cluster_file(bad)
    assert {p.split(": ")[0] for p in problems} == {
        "head_start_ray_commands[1]", "worker_start_ray_commands[1]"}, problems
    assert all("must run `ray start` with RAY_AUTH_MODE=token" in p for p in problems)


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_token_file_not_copied_to_the_nodes_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: c["file_mounts"].pop("~/.ray/auth_token"))
    (line,) = only(validate_cluster_file(bad), "file_mounts")
    assert "must copy the auth token to every node" in line


def test_token_file_at_a_custom_path_is_accepted(tmp_path):
    def custom_path(config):
        config["file_mounts"]["/etc/ray/token"] = config["file_mounts"].pop("~/.ray/auth_token")
        replace_in_commands(config, "export RAY_AUTH_MODE=token;",
                            "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=/etc/ray/token;")
    assert validate_cluster_file(launcher_variant(tmp_path, AWS, custom_path)) == []


def test_a_token_written_into_the_file_is_caught_without_echoing_it(tmp_path):
    bad = launcher_variant(tmp_path, ONPREM, lambda c: replace_in_commands(
        c, "export RAY_AUTH_MODE=token;",
        "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=s3cr3t-t0ken;"))
    problems = validate_cluster_file(bad)
    line = with_field(problems, "head_start_ray_commands[1]")[0]
    assert "must not hold the auth token itself" in line and "<12 characters>" in line
    assert "s3cr3t" not in "\n".join(problems)


# ---- launcher files: dashboard --------------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_dashboard_on_all_interfaces_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"))
    (line,) = only(validate_cluster_file(bad), "head_start_ray_commands[1]")
    assert "--dashboard-host must be 127.0.0.1" in line and line.endswith("got '0.0.0.0'")


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_dashboard_host_left_out_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "--dashboard-host=127.0.0.1", ""))
    (line,) = only(validate_cluster_file(bad), "head_start_ray_commands[1]")
    assert "must pass --dashboard-host=127.0.0.1" in line


@pytest.mark.parametrize("path", [AWS, GCP], ids=ids([AWS, GCP]))
def test_rays_default_start_commands_are_linted_too(tmp_path, path):
    """Leave head_start_ray_commands out and Ray runs its default, with --dashboard-host=0.0.0.0."""
    bad = launcher_variant(tmp_path, path, lambda c: c.pop("head_start_ray_commands"))
    lines = with_field(validate_cluster_file(bad), "head_start_ray_commands[1]")
    dashboard = [line for line in lines if "--dashboard-host must be 127.0.0.1" in line]
    assert dashboard and "Ray's default" in dashboard[0] and dashboard[0].endswith("got '0.0.0.0'")


# ---- launcher files: ingress ----------------------------------------------------------------

WORLD = [{"CidrIp": "0.0.0.0/0"}]


@pytest.mark.parametrize("rule, opened", [
    ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": WORLD}, "8265"),
    ({"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": WORLD}, "8265"),
    ({"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379,
      "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}, "6379"),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}, "10001"),
    ({"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001,
      "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, "10001"),
], ids=["8265-world", "range-with-8265", "6379-one-cidr", "all-traffic-private", "10001-ipv6"])
def test_security_group_rule_opening_ray_ports_is_caught(tmp_path, rule, opened):
    bad = launcher_variant(tmp_path, AWS, lambda c: c["provider"].update(
        security_group={"GroupName": "raytune-suite", "IpPermissions": [rule]}))
    lines = only(validate_cluster_file(bad), "provider.security_group.IpPermissions[0]")
    assert any("must not open" in line and f"{opened} (" in line and "to a CIDR" in line
               for line in lines)


@pytest.mark.parametrize("ranges", [{"IpRanges": WORLD}, {"Ipv6Ranges": [{"CidrIpv6": "::/0"}]}],
                         ids=["ipv4", "ipv6"])
def test_ssh_open_to_the_world_is_caught(tmp_path, ranges):
    rule = {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, **ranges}
    bad = launcher_variant(tmp_path, AWS, lambda c: c["provider"].update(
        security_group={"IpPermissions": [rule]}))
    (line,) = only(validate_cluster_file(bad), "provider.security_group.IpPermissions[0]")
    assert "must not open SSH (22) to 0.0.0.0/0" in line


def test_ssh_from_one_network_and_traffic_between_members_pass(tmp_path):
    rules = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
              "IpRanges": [{"CidrIp": "203.0.113.0/24"}]},
             {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]}]
    ok = launcher_variant(tmp_path, AWS, lambda c: c["provider"].update(
        security_group={"IpPermissions": rules}))
    assert validate_cluster_file(ok) == []


def test_aws_node_type_without_own_security_group_is_caught(tmp_path):
    """Ray's auto-created security group always opens SSH to 0.0.0.0/0."""
    bad = launcher_variant(tmp_path, AWS, lambda c: c["available_node_types"]["ray.worker.4xa10g"]
                           ["node_config"].pop("SecurityGroupIds"))
    (line,) = only(validate_cluster_file(bad),
                   "available_node_types.ray.worker.4xa10g.node_config.SecurityGroupIds")
    assert "must name a security group you created" in line and "0.0.0.0/0" in line


def test_gcp_node_type_without_its_subnetwork_is_caught(tmp_path):
    bad = launcher_variant(tmp_path, GCP, lambda c: c["available_node_types"]["ray_head_cpu"]
                           ["node_config"].pop("networkInterfaces"))
    (line,) = only(validate_cluster_file(bad),
                   "available_node_types.ray_head_cpu.node_config.networkInterfaces")
    assert "must name the subnetwork whose firewall rules you set" in line


# ---- launcher files: uv and MLflow ----------------------------------------------------------

@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_setup_without_uv_is_caught(tmp_path, path):
    def pip_instead(config):
        kept = [c for c in config["setup_commands"] if "uv" not in c]
        assert len(kept) < len(config["setup_commands"])
        config["setup_commands"] = kept + ["pip install -e ~/raytune-suite"]
    (line,) = only(validate_cluster_file(launcher_variant(tmp_path, path, pip_instead)),
                   "setup_commands")
    assert "must install the suite with uv on every node" in line


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_mlflow_on_all_interfaces_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "--host 127.0.0.1", "--host 0.0.0.0"))
    (line,) = only(validate_cluster_file(bad), "head_start_ray_commands[2]")
    assert "mlflow server --host must be 127.0.0.1 or a private address" in line
    assert line.endswith("got '0.0.0.0'")


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_mlflow_without_basic_auth_is_caught(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: replace_in_commands(
        c, "--app-name basic-auth", ""))
    (line,) = only(validate_cluster_file(bad), "head_start_ray_commands[2]")
    assert "must pass --app-name basic-auth" in line


def test_mlflow_on_a_private_address_passes(tmp_path):
    ok = launcher_variant(tmp_path, ONPREM, lambda c: replace_in_commands(
        c, "--host 127.0.0.1", "--host 192.168.10.5"))
    assert validate_cluster_file(ok) == []


def test_no_mlflow_server_on_the_head_is_caught(tmp_path):
    bad = launcher_variant(tmp_path, GCP, lambda c: c["head_start_ray_commands"].pop(2))
    (line,) = only(validate_cluster_file(bad), "head_start_ray_commands")
    assert "must start the MLflow tracking server on the head" in line


# ---- launcher files: Ray's own schema and checks --------------------------------------------

@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_wrong_type_is_caught_by_rays_schema_with_its_path(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: c.update(max_workers="many"))
    (line,) = only(validate_cluster_file(bad), "max_workers")
    assert "must be of type integer in Ray's cluster schema (ray-schema.json)" in line
    assert line.endswith("got 'many'")


@pytest.mark.parametrize("path", LAUNCHERS, ids=ids(LAUNCHERS))
def test_unknown_top_level_key_is_caught_by_rays_schema(tmp_path, path):
    bad = launcher_variant(tmp_path, path, lambda c: c.update(head_node_typo="x"))
    (line,) = only(validate_cluster_file(bad), "head_node_typo")
    assert "is not a field Ray's cluster schema (ray-schema.json) allows here" in line
    assert "head_node_type" in line  # the allowed names are listed


@pytest.mark.parametrize("path, change, field", [
    (AWS, lambda c: c["available_node_types"]["ray.worker.4xa10g"]["resources"].update(GPU="4"),
     "available_node_types.ray.worker.4xa10g.resources.GPU"),
    (GCP, lambda c: c["available_node_types"]["ray_worker_8xa100"].update(priority="high"),
     "available_node_types.ray_worker_8xa100.priority"),
    (ONPREM, lambda c: c["provider"].update(worker_ips="192.0.2.11"), "provider.worker_ips"),
], ids=["aws-resources", "gcp-node-type", "onprem-provider"])
def test_nested_schema_violation_names_the_nested_field(tmp_path, path, change, field):
    (line,) = only(validate_cluster_file(launcher_variant(tmp_path, path, change)), field)
    assert "must be of type" in line and "Ray's cluster schema" in line


def test_rays_cross_field_rules_run_too(tmp_path):
    bad = launcher_variant(tmp_path, AWS, lambda c: c.update(head_node_type="ray.head.gpu"))
    (line,) = only(validate_cluster_file(bad), "head_node_type")
    assert "must pass Ray's validate_config" in line and "available_node_types" in line

    def fewer_than_min(config):
        config["max_workers"] = 1
        config["available_node_types"]["ray.worker.4xa10g"]["min_workers"] = 2
    fewer = launcher_variant(tmp_path, AWS, fewer_than_min)
    (line,) = only(validate_cluster_file(fewer), "max_workers")
    assert "must pass Ray's validate_config" in line and "min_workers" in line


def test_node_types_in_an_onprem_file_are_refused_like_ray_does(tmp_path):
    bad = launcher_variant(tmp_path, ONPREM, lambda c: c.update(available_node_types={
        "gpu": {"resources": {"GPU": 4}, "node_config": {}}}))
    (line,) = only(validate_cluster_file(bad), "available_node_types")
    assert "is not supported by Ray's local provider" in line and "--num-gpus" in line


def test_unknown_provider_lists_the_known_ones(tmp_path):
    bad = launcher_variant(tmp_path, AWS, lambda c: c["provider"].update(type="awz"))
    line = with_field(validate_cluster_file(bad), "provider.type")[0]
    assert "aws" in line and "gcp" in line and line.endswith("got 'awz'")


# ---- KubeRay manifest -------------------------------------------------------------------------

def manifest_variant(tmp_path, change):
    docs = list(yaml.safe_load_all(KUBERAY.read_text()))
    cluster = next(d for d in docs if d["kind"] == "RayCluster")
    change(cluster["spec"], docs)
    out = tmp_path / KUBERAY.name
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


RC = "RayCluster/raytune-suite.spec"
HEAD_C = f"{RC}.headGroupSpec.template.spec.containers"
WORKER_C = f"{RC}.workerGroupSpecs[0].template.spec.containers"


def head(spec):
    return spec["headGroupSpec"]


def env_of(container):
    return {e["name"]: e for e in container["env"]}


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_kuberay_public_head_service_is_caught(tmp_path, service_type):
    bad = manifest_variant(tmp_path, lambda s, _: head(s).update(serviceType=service_type))
    (line,) = only(validate_cluster_file(bad), f"{RC}.headGroupSpec.serviceType")
    assert "must be ClusterIP" in line and line.endswith(f"got '{service_type}'")


def test_kuberay_dashboard_on_all_interfaces_is_caught(tmp_path):
    bad = manifest_variant(tmp_path, lambda s, _: head(s)["rayStartParams"].update(
        {"dashboard-host": "0.0.0.0"}))
    (line,) = only(validate_cluster_file(bad), f"{RC}.headGroupSpec.rayStartParams.dashboard-host")
    assert 'must be "127.0.0.1"' in line and line.endswith("got '0.0.0.0'")


def test_kuberay_dashboard_host_left_out_is_caught(tmp_path):
    bad = manifest_variant(tmp_path, lambda s, _: head(s)["rayStartParams"].pop("dashboard-host"))
    (line,) = only(validate_cluster_file(bad), f"{RC}.headGroupSpec.rayStartParams.dashboard-host")
    assert "KubeRay otherwise binds the dashboard and Jobs API to 0.0.0.0" in line


def test_kuberay_container_without_auth_mode_is_caught(tmp_path):
    def drop(spec, _):
        container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_MODE"]
    (line,) = only(validate_cluster_file(manifest_variant(tmp_path, drop)), f"{WORKER_C}[0].env")
    assert "must set RAY_AUTH_MODE=token on every container" in line


def test_kuberay_auth_mode_disabled_is_caught(tmp_path):
    bad = manifest_variant(tmp_path, lambda s, _: env_of(
        head(s)["template"]["spec"]["containers"][1])["RAY_AUTH_MODE"].update(value="disabled"))
    (line,) = only(validate_cluster_file(bad), f"{HEAD_C}[1].env[0].value")
    assert "RAY_AUTH_MODE must be token" in line and line.endswith("got 'disabled'")


def test_kuberay_ray_container_without_the_token_is_caught(tmp_path):
    def drop(spec, _):
        container = head(spec)["template"]["spec"]["containers"][0]
        container["env"] = [e for e in container["env"] if e["name"] != "RAY_AUTH_TOKEN_PATH"]
    (line,) = only(validate_cluster_file(manifest_variant(tmp_path, drop)), f"{HEAD_C}[0].env")
    assert "must give the Ray container the token from a Secret" in line


def test_kuberay_token_written_into_the_manifest_is_caught_without_echoing_it(tmp_path):
    def literal(spec, _):
        container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        container["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"},
                            {"name": "RAY_AUTH_TOKEN", "value": "s3cr3t"}]
    problems = validate_cluster_file(manifest_variant(tmp_path, literal))
    (line,) = only(problems, f"{WORKER_C}[0].env[1].value")
    assert "must not hold the auth token itself" in line and "s3cr3t" not in line


def test_kuberay_token_from_a_secret_env_and_operator_auth_pass(tmp_path):
    def secret_env(spec, _):
        container = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        container["env"] = [{"name": "RAY_AUTH_MODE", "value": "token"},
                            {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {
                                "name": "raytune-ray-token", "key": "auth_token"}}}]
    assert validate_cluster_file(manifest_variant(tmp_path, secret_env)) == []

    def operator_auth(spec, _):
        spec["authOptions"] = {"mode": "token"}
        for group in [head(spec), *spec["workerGroupSpecs"]]:
            for container in group["template"]["spec"]["containers"]:
                container["env"] = [e for e in container["env"]
                                    if not e["name"].startswith("RAY_AUTH")]
    assert validate_cluster_file(manifest_variant(tmp_path, operator_auth)) == []


def test_kuberay_mlflow_on_all_interfaces_is_caught(tmp_path):
    def everywhere(spec, _):
        mlflow = head(spec)["template"]["spec"]["containers"][1]
        assert "--host 127.0.0.1" in mlflow["args"][0]
        mlflow["args"] = [mlflow["args"][0].replace("--host 127.0.0.1", "--host 0.0.0.0")]
    (line,) = only(validate_cluster_file(manifest_variant(tmp_path, everywhere)), f"{HEAD_C}[1]")
    assert "mlflow server --host must be 127.0.0.1" in line and line.endswith("got '0.0.0.0'")


def test_kuberay_without_mlflow_in_the_head_pod_is_caught(tmp_path):
    bad = manifest_variant(tmp_path, lambda s, _: head(s)["template"]["spec"]["containers"].pop(1))
    (line,) = only(validate_cluster_file(bad), HEAD_C)
    assert "must run the MLflow tracking server in the head pod" in line


def test_kuberay_exposing_objects_are_caught(tmp_path):
    def expose(_, docs):
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ray-public"},
                     "spec": {"type": "LoadBalancer", "ports": [{"port": 8265}]}})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                     "metadata": {"name": "dashboard"}, "spec": {}})
    problems = validate_cluster_file(manifest_variant(tmp_path, expose))
    assert "must be ClusterIP" in with_field(problems, "Service/ray-public.spec.type")[0]
    assert "must not exist" in with_field(problems, "Ingress/dashboard")[0]
    assert len(problems) == 2


def test_kuberay_structure_is_checked(tmp_path):
    def broken(spec, docs):
        next(d for d in docs if d["kind"] == "RayCluster")["apiVersion"] = "ray.io/v1alpha1"
        del spec["workerGroupSpecs"]
    problems = validate_cluster_file(manifest_variant(tmp_path, broken))
    assert "must be ray.io/v1" in with_field(problems, "RayCluster/raytune-suite.apiVersion")[0]
    assert "must list at least one worker group" in with_field(
        problems, f"{RC}.workerGroupSpecs")[0]
    assert len(problems) == 2


# ---- any file -------------------------------------------------------------------------------

def test_invalid_yaml_names_file_line_and_column(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("cluster_name: x\nprovider: {type: aws\n")
    (line,) = validate_cluster_file(bad)
    assert line.startswith(f"{bad}:3:1: must be valid YAML")


def test_a_file_that_is_no_cluster_file_says_what_it_must_be():
    experiment = ROOT / "experiments" / "quickstart.yaml"
    (line,) = validate_cluster_file(experiment)
    assert line.startswith(f"{experiment}: must hold a Ray cluster launcher config")


def test_check_cluster_file_raises_every_problem_at_once(tmp_path):
    def two_mistakes(config):
        config["max_workers"] = "many"
        config["file_mounts"].pop("~/.ray/auth_token")
    bad = launcher_variant(tmp_path, ONPREM, two_mistakes)
    with pytest.raises(SpecErrors) as raised:
        check_cluster_file(bad)
    assert isinstance(raised.value, SpecError)
    assert str(raised.value).splitlines() == validate_cluster_file(bad)
    assert [e.field for e in raised.value.errors] == ["max_workers", "file_mounts"]

