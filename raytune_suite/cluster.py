"""Cluster files: checked the way Ray checks them, then linted for this suite's security rules.

Two kinds of file are understood:

* Ray cluster launcher files (``ray up FILE``): one mapping with ``provider`` and no ``kind``.
* KubeRay manifests (``kubectl apply -f FILE``): one or more Kubernetes documents, at least
  one of them ``kind: RayCluster``.

Every problem is one line ``<field path>: <rule>, got <value>``, like the experiment file's
errors (:class:`~raytune_suite.errors.SpecError`). The security rules, in both formats:

* token authentication on: ``RAY_AUTH_MODE=token`` wherever Ray starts, and the token on
  every node (a ``file_mounts`` entry, or a Kubernetes Secret), never written in the file;
* the dashboard / Jobs API bound to loopback (127.0.0.1), reached through ``ray dashboard``
  or ``kubectl port-forward``;
* no ingress rule that opens Ray's ports 6379, 8265 or 10001 to a CIDR, SSH never open to
  0.0.0.0/0 (launcher), no LoadBalancer/NodePort Service or Ingress (KubeRay);
* the suite installed with uv on every node (launcher);
* an MLflow tracking server on the head, bound to loopback or a private address, with
  ``--app-name basic-auth``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.resources
import io
import ipaddress
import json
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import yaml

from raytune_suite.errors import SpecError, SpecErrors

__all__ = ["validate_cluster_file", "check_cluster_file"]

_NOTHING = SpecError._MISSING
RAY_PORTS = {6379: "GCS", 8265: "dashboard / Jobs API", 10001: "Ray Client"}
SSH_PORT = 22
DEFAULT_TOKEN_PATH = "~/.ray/auth_token"
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
HEAD_COMMAND_LISTS = ("head_setup_commands", "head_start_ray_commands")
PUBLIC_SERVICE_TYPES = ("LoadBalancer", "NodePort")
EXPOSING_KINDS = ("Ingress", "HTTPRoute", "Route")


def validate_cluster_file(path: str | Path) -> list[str]:
    """Problems found in a Ray cluster launcher YAML or a KubeRay RayCluster manifest; [] when fine.

    Args:
        path: the cluster file (``cluster/aws-gpu.yaml``, ``cluster/kuberay-raycluster.yaml``...).

    Returns:
        One line per problem, ``<field path>: <rule>, got <value>`` (same style as SpecError).
    """
    return [str(problem) for problem in _problems(Path(path))]


def check_cluster_file(path: str | Path) -> None:
    """Raise when :func:`validate_cluster_file` finds anything.

    Raises:
        SpecErrors: all problems, one per line (a :class:`SpecError`, so the CLI exits with 2).
    """
    problems = _problems(Path(path))
    if problems:
        raise SpecErrors(problems)


def _problems(path: Path) -> list[SpecError]:
    # One per distinct line: a command may repeat the same setting.
    unique = {str(p): p for p in _all_problems(path)}
    return list(unique.values())


def _all_problems(path: Path) -> list[SpecError]:
    docs, problems = _load_documents(path)
    if problems:
        return problems
    if any(isinstance(doc, dict) and "kind" in doc for doc in docs):
        return _kuberay_problems(docs)
    if len(docs) == 1 and isinstance(docs[0], dict) and "provider" in docs[0]:
        return _launcher_problems(docs[0])
    return [SpecError(str(path), "must hold a Ray cluster launcher config (a mapping with "
                      "`provider`) or a KubeRay manifest (a document with kind: RayCluster)",
                      docs[0] if len(docs) == 1 else docs)]


def _load_documents(path: Path) -> tuple[list[Any], list[SpecError]]:
    try:
        text = path.read_text()
    except OSError as e:
        return [], [SpecError(str(path), f"must be a readable file ({e.strerror})", str(path))]
    try:
        docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return [], [SpecError(where, "must be valid YAML", problem)]
    if not docs:
        return [], [SpecError(str(path), "must not be empty")]
    return docs, []


# --------------------------------------------------------------------------------------------
# Launcher files: Ray's own checks
# --------------------------------------------------------------------------------------------

def _launcher_problems(raw: dict) -> list[SpecError]:
    problems = _ray_checks(raw)
    problems += _launcher_lint(raw, _with_ray_defaults(raw))
    return problems


def _ray_checks(raw: dict) -> list[SpecError]:
    """Check the file the way ``ray up`` does, offline.

    ``ray up`` runs Ray's ``prepare_config`` (merge the provider's ``defaults.yaml``, rewrite
    local-provider files into one node type, fill per-node-type worker counts), then the
    provider's bootstrap (cloud API calls, so credentials and network), then
    ``validate_config`` (``jsonschema.validate`` against ``ray/autoscaler/ray-schema.json``,
    then cross-field rules). Here the same ``prepare_config`` runs (offline: it only reads
    ``defaults.yaml``), its result is validated against the same ``ray-schema.json`` with
    ``jsonschema``'s ``iter_errors`` so that every error is reported with its field path
    (``validate_config`` stops at the first one and its message carries no path), and when
    the schema holds Ray's own ``validate_config`` runs for its cross-field rules
    (``head_node_type``, ``min_workers`` versus ``max_workers``). The provider bootstrap is
    skipped: it needs credentials. The one thing it adds before validation, the
    ``resources`` AWS detects from the instance type, is stood in for by ``{}``.
    """
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    problems = _local_provider_problems(raw)
    prepared = None
    if not problems:
        try:
            with _quiet("ray.autoscaler._private.util"):
                prepared = prepare_config(copy.deepcopy(raw))
        except NotImplementedError:
            return [SpecError("provider.type", "must be a provider Ray's cluster launcher "
                              f"knows ({', '.join(_ray_provider_types())})",
                              raw["provider"].get("type") if isinstance(raw["provider"], dict)
                              else raw["provider"])]
        except Exception as e:  # malformed input Ray's preparation trips over: the schema says why
            problems = [SpecError("<file>", f"Ray's prepare_config must accept the file ({e})")]
    config = prepared if prepared is not None else raw
    if prepared is not None and _mapping(prepared.get("provider")).get("type") == "aws":
        for node_type in _mapping(prepared.get("available_node_types")).values():
            if isinstance(node_type, dict):
                node_type.setdefault("resources", {})  # AWS fills these in from the instance type

    schema = json.loads(
        importlib.resources.files("ray.autoscaler").joinpath("ray-schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(config),
                    key=lambda e: [str(p) for p in e.absolute_path])
    in_file = [e for e in errors if _exists(raw, list(e.absolute_path))]
    schema_problems = [p for e in (in_file or errors) for p in _schema_problems(e)]
    if schema_problems:
        return schema_problems  # the preparation's failure is only a symptom of these
    if problems or prepared is None:
        return problems
    try:
        validate_config(prepared)
    except (ValueError, RuntimeError, AssertionError, jsonschema.ValidationError) as e:
        message = getattr(e, "message", None) or str(e)
        named = re.search(r"`(\w+)`", message)
        field = named.group(1) if named and named.group(1) in prepared else "<file>"
        return [SpecError(field, f"must pass Ray's validate_config ({message})",
                          prepared.get(field, _NOTHING))]
    return []


@contextlib.contextmanager
def _quiet(*logger_names: str) -> Iterator[None]:
    """Keep Ray's notes for `ray up` out of the user's terminal: filled-in defaults (logging)
    and its Docker-only warning that single-file mounts do not update inside containers
    (``cli_logger``, which writes straight to stdout)."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _local_provider_problems(raw: dict) -> list[SpecError]:
    """What Ray's local provider aborts on (``cli_logger.abort``), as lines instead of a panic."""
    provider = _mapping(raw.get("provider"))
    if provider.get("type") != "local" or "coordinator_address" in provider:
        return []
    problems = [SpecError(field, "is not supported by Ray's local provider: list the machines "
                          "in provider.worker_ips and declare their GPUs with "
                          "`ray start --num-gpus=N` in worker_start_ray_commands", raw[field])
                for field in ("head_node", "worker_nodes", "available_node_types")
                if raw.get(field)]
    for field in ("head_ip", "worker_ips"):
        if field not in provider:
            problems.append(SpecError(f"provider.{field}", "is required by Ray's local provider "
                                      "(or provider.coordinator_address)"))
    return problems


def _schema_problems(error) -> list[SpecError]:
    """One jsonschema error of Ray's schema -> lines naming the offending field."""
    path = list(error.absolute_path)
    where = _dotted(path)
    source = "Ray's cluster schema (ray-schema.json)"
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        extras = [k for k in error.instance
                  if k not in allowed and not any(re.search(p, str(k)) for p in patterns)]
        return [SpecError(_dotted(path + [k]), f"is not a field {source} allows here "
                          f"(allowed: {', '.join(allowed)})", error.instance[k]) for k in extras]
    if error.validator == "required" and isinstance(error.instance, dict):
        return [SpecError(_dotted(path + [k]), f"is required by {source}")
                for k in error.validator_value if k not in error.instance]
    if error.validator == "type":
        types = error.validator_value
        types = " or ".join(types) if isinstance(types, list) else types
        return [SpecError(where, f"must be of type {types} in {source}", error.instance)]
    if error.validator in ("minimum", "maximum"):
        sign = ">=" if error.validator == "minimum" else "<="
        return [SpecError(where, f"must be {sign} {error.validator_value} in {source}",
                          error.instance)]
    if error.validator == "enum":
        return [SpecError(where, f"must be one of {', '.join(map(str, error.validator_value))} "
                          f"in {source}", error.instance)]
    return [SpecError(where, f"must satisfy {source} ({error.message})", error.instance)]


def _ray_provider_types() -> list[str]:
    from ray.autoscaler._private.providers import _DEFAULT_CONFIGS

    return sorted(_DEFAULT_CONFIGS)


def _with_ray_defaults(raw: dict) -> dict:
    """The file as Ray runs it: top-level keys it leaves out come from the provider's defaults.

    This is Ray's ``fillout_defaults`` before ``merge_setup_commands``, so command lists keep
    the names and indices of the file (a left-out ``head_start_ray_commands`` is Ray's
    default, which binds the dashboard to 0.0.0.0).
    """
    from ray.autoscaler._private.providers import _get_default_config

    try:
        defaults = _get_default_config(raw["provider"])
    except Exception:  # unknown provider or a malformed one: _ray_checks reports it
        defaults = {}
    return copy.deepcopy({**defaults, **raw})


# --------------------------------------------------------------------------------------------
# Launcher files: the security lint
# --------------------------------------------------------------------------------------------

def _launcher_lint(raw: dict, config: dict) -> list[SpecError]:
    problems: list[SpecError] = []
    problems += _token_auth_problems(raw, config)
    problems += _dashboard_problems(raw, config)
    problems += _ingress_problems(config)
    problems += _uv_problems(raw, config)
    problems += _launcher_mlflow_problems(raw, config)
    return problems


def _token_auth_problems(raw: dict, config: dict) -> list[SpecError]:
    problems = []
    for field, command in _commands(config):
        for mode in re.findall(r"\bRAY_AUTH_MODE=[\"']?([\w-]*)", command):
            if mode != "token":
                problems.append(SpecError(field, "must set RAY_AUTH_MODE=token, never another "
                                          "mode: without token authentication anyone who "
                                          "reaches the cluster can run code on it", mode))
        for token in re.findall(r"\bRAY_AUTH_TOKEN=[\"']?([^\s\"';]*)", command):
            if token and not token.startswith("$"):
                problems.append(SpecError(field, "must not hold the auth token itself: copy "
                                          f"{DEFAULT_TOKEN_PATH} to every node with file_mounts",
                                          f"<{len(token)} characters>"))
    starts = list(_ray_starts(config))
    if not any(head for _, _, _, head in starts):
        problems.append(SpecError("head_start_ray_commands", "must start Ray with "
                                  "`ray start --head`" + _default_note(raw, config,
                                  "head_start_ray_commands"),
                                  config.get("head_start_ray_commands", _NOTHING)))
    for field, command, _, _ in starts:
        if "RAY_AUTH_MODE=" not in command:
            problems.append(SpecError(field, "must run `ray start` with RAY_AUTH_MODE=token "
                                      "(prefix it with `export RAY_AUTH_MODE=token;`): a head "
                                      "then requires the token, and a worker without it is "
                                      "refused by a token-authenticated head"
                                      + _default_note(raw, config, field.split("[")[0]), command))
    token_paths = {DEFAULT_TOKEN_PATH} | {
        p for _, c in _commands(config)
        for p in re.findall(r"\bRAY_AUTH_TOKEN_PATH=[\"']?([^\s\"';]+)", c)}
    mounts = _mapping(config.get("file_mounts"))
    if not any(_same_path(remote, token_paths) for remote in mounts):
        problems.append(SpecError("file_mounts", "must copy the auth token to every node, e.g. "
                                  f'"{DEFAULT_TOKEN_PATH}": "{DEFAULT_TOKEN_PATH}" (workers '
                                  "cannot join a token-authenticated head without it)",
                                  dict(mounts)))
    return problems


def _dashboard_problems(raw: dict, config: dict) -> list[SpecError]:
    problems = []
    for field, command, args, head in _ray_starts(config):
        if not head:
            continue
        host = _option(args, "--dashboard-host")
        note = _default_note(raw, config, "head_start_ray_commands")
        if host is None:
            problems.append(SpecError(field, "must pass --dashboard-host=127.0.0.1 to "
                                      "`ray start --head` (reach the dashboard with "
                                      "`ray dashboard FILE`)" + note, command))
        elif _address_kind(host) != "loopback":
            problems.append(SpecError(field, "--dashboard-host must be 127.0.0.1: the dashboard "
                                      "and Jobs API run code for whoever reaches them; forward "
                                      "it over SSH with `ray dashboard FILE`" + note, host))
    return problems


def _ingress_problems(config: dict) -> list[SpecError]:
    problems = []
    provider = _mapping(config.get("provider"))
    rules = _mapping(provider.get("security_group")).get("IpPermissions")
    for i, rule in enumerate(rules if isinstance(rules, list) else []):
        if not isinstance(rule, dict):
            continue
        field = f"provider.security_group.IpPermissions[{i}]"
        ports, cidrs = _port_range(rule), _cidrs(rule)
        if ports is None or not cidrs:
            continue  # ICMP, or a rule for members of a security group only
        low, high = ports
        exposed = [f"{port} ({name})" for port, name in RAY_PORTS.items() if low <= port <= high]
        if exposed:
            problems.append(SpecError(field, f"must not open {', '.join(exposed)} to a CIDR: "
                                      "Ray's ports stay open only to cluster members (a "
                                      "UserIdGroupPairs rule); reach the dashboard with "
                                      "`ray dashboard FILE`", rule))
        if low <= SSH_PORT <= high and any(_is_everywhere(c) for c in cidrs):
            problems.append(SpecError(field, "must not open SSH (22) to 0.0.0.0/0 or ::/0: "
                                      "limit it to your admin network's CIDR", rule))
    node_types = _mapping(config.get("available_node_types"))
    if provider.get("type") == "aws":
        for name, node_type in node_types.items():
            node_config = _mapping(_mapping(node_type).get("node_config"))
            interfaces = node_config.get("NetworkInterfaces")
            interfaces = interfaces if isinstance(interfaces, list) else []
            groups = node_config.get("SecurityGroupIds") or any(
                _mapping(nic).get("Groups") for nic in interfaces)
            if not groups:
                problems.append(SpecError(
                    f"available_node_types.{name}.node_config.SecurityGroupIds",
                    "must name a security group you created (SSH from your CIDR only, all else "
                    "from the group itself): without it Ray creates one whose SSH rule is open "
                    "to 0.0.0.0/0 (IpPermissions under provider.security_group only add rules)"))
    if provider.get("type") == "gcp":
        for name, node_type in node_types.items():
            node_config = _mapping(_mapping(node_type).get("node_config"))
            if not (node_config.get("networkInterfaces") or node_config.get("networkConfig")):
                problems.append(SpecError(
                    f"available_node_types.{name}.node_config.networkInterfaces",
                    "must name the subnetwork whose firewall rules you set (SSH from your CIDR "
                    "only): without it Ray picks the project's first subnetwork, and the "
                    "`default` network lets SSH in from 0.0.0.0/0"))
    return problems


def _uv_problems(raw: dict, config: dict) -> list[SpecError]:
    def with_uv(commands: Any) -> bool:
        return any(_uv_installs(c) for c in _strings(commands))

    problems = []
    everywhere = with_uv(config.get("setup_commands"))
    if not everywhere and not (with_uv(config.get("head_setup_commands"))
                               and with_uv(config.get("worker_setup_commands"))):
        problems.append(SpecError("setup_commands", "must install the suite with uv on every "
                                  "node (e.g. `uv sync --locked` in the checkout copied by "
                                  "file_mounts), so all nodes run the locked Ray, torch and MLflow"
                                  + _default_note(raw, config, "setup_commands"),
                                  config.get("setup_commands", _NOTHING)))
    for name, node_type in _mapping(config.get("available_node_types")).items():
        commands = _mapping(node_type).get("worker_setup_commands")
        if commands is not None and not with_uv(commands):
            problems.append(SpecError(f"available_node_types.{name}.worker_setup_commands",
                                      "must install the suite with uv too: a node type's "
                                      "worker_setup_commands replace setup_commands", commands))
    return problems


def _launcher_mlflow_problems(raw: dict, config: dict) -> list[SpecError]:
    problems = []
    servers = [(field, args) for field, command in _commands(config)
               for args in _mlflow_servers(command)]
    if not any(field.startswith(HEAD_COMMAND_LISTS) for field, _ in servers):
        problems.append(SpecError("head_start_ray_commands", "must start the MLflow tracking "
                                  "server on the head: `nohup mlflow server --host 127.0.0.1 "
                                  "--app-name basic-auth --backend-store-uri sqlite:///... "
                                  "--artifacts-destination ... &` (here or in "
                                  "head_setup_commands)"))
    for field, args in servers:
        problems += _mlflow_server_problems(field, args)
    return problems


# --------------------------------------------------------------------------------------------
# KubeRay manifests
# --------------------------------------------------------------------------------------------

def _kuberay_problems(docs: list[Any]) -> list[SpecError]:
    problems: list[SpecError] = []
    clusters = 0
    for doc in docs:
        if not isinstance(doc, dict):
            problems.append(SpecError("<document>", "must be a Kubernetes object (a mapping with "
                                      "apiVersion and kind)", doc))
            continue
        kind, name = doc.get("kind"), _mapping(doc.get("metadata")).get("name")
        prefix = f"{kind}/{name}" if name else str(kind)
        spec = _mapping(doc.get("spec"))
        if kind == "RayCluster":
            clusters += 1
            problems += _raycluster_problems(prefix, doc)
        elif kind == "Service" and spec.get("type") in PUBLIC_SERVICE_TYPES:
            problems.append(SpecError(f"{prefix}.spec.type", "must be ClusterIP: a "
                                      f"{spec['type']} Service exposes the Ray cluster outside "
                                      "Kubernetes; use kubectl port-forward", spec["type"]))
        elif kind in EXPOSING_KINDS:
            problems.append(SpecError(prefix, f"must not exist: an {kind} exposes the Ray head "
                                      "(dashboard / Jobs API) outside Kubernetes; use kubectl "
                                      "port-forward", kind))
    if not clusters:
        problems.append(SpecError("kind", "must include a RayCluster (apiVersion ray.io/v1, "
                                  "kind RayCluster)",
                                  [d.get("kind") for d in docs if isinstance(d, dict)]))
    return problems


def _raycluster_problems(prefix: str, doc: dict) -> list[SpecError]:
    problems = []
    if doc.get("apiVersion") != "ray.io/v1":
        problems.append(SpecError(f"{prefix}.apiVersion", "must be ray.io/v1 (KubeRay 1.0 or "
                                  "newer)", doc.get("apiVersion", _NOTHING)))
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return problems + [SpecError(f"{prefix}.spec", "must be a mapping with headGroupSpec "
                                     "and workerGroupSpecs", _given(spec))]
    head = spec.get("headGroupSpec")
    workers = spec.get("workerGroupSpecs")
    groups: list[tuple[str, dict]] = []
    if isinstance(head, dict):
        groups.append((f"{prefix}.spec.headGroupSpec", head))
    else:
        problems.append(SpecError(f"{prefix}.spec.headGroupSpec", "is required: a mapping with "
                                  "rayStartParams and template", _given(head)))
    if isinstance(workers, list) and workers:
        for i, group in enumerate(workers):
            field = f"{prefix}.spec.workerGroupSpecs[{i}]"
            if not isinstance(group, dict):
                problems.append(SpecError(field, "must be a mapping with groupName and "
                                          "template", group))
                continue
            groups.append((field, group))
            problems += _worker_group_problems(field, group)
    else:
        problems.append(SpecError(f"{prefix}.spec.workerGroupSpecs", "must list at least one "
                                  "worker group (the GPU workers)", _given(workers)))
    auth_by_operator = _mapping(spec.get("authOptions")).get("mode") == "token"
    for field, group in groups:
        problems += _pod_auth_problems(field, group, auth_by_operator)
    if isinstance(head, dict):
        problems += _head_group_problems(f"{prefix}.spec.headGroupSpec", head)
    for field, group in groups:
        for j, container in enumerate(_containers(group)):
            for args in _mlflow_servers_in(container):
                problems += _mlflow_server_problems(
                    f"{field}.template.spec.containers[{j}]", args)
    return problems


def _worker_group_problems(field: str, group: dict) -> list[SpecError]:
    problems = []
    if not isinstance(group.get("groupName"), str):
        problems.append(SpecError(f"{field}.groupName", "is required (a name for the group)",
                                  group.get("groupName", _NOTHING)))
    low, high = group.get("minReplicas"), group.get("maxReplicas")
    if isinstance(low, int) and isinstance(high, int) and low > high:
        problems.append(SpecError(f"{field}.minReplicas", "minReplicas <= maxReplicas must hold",
                                  {"minReplicas": low, "maxReplicas": high}))
    return problems


def _head_group_problems(field: str, head: dict) -> list[SpecError]:
    problems = []
    host = _mapping(head.get("rayStartParams")).get("dashboard-host")
    if host is None:
        problems.append(SpecError(f"{field}.rayStartParams.dashboard-host", 'must be "127.0.0.1": '
                                  "KubeRay otherwise binds the dashboard and Jobs API to "
                                  "0.0.0.0; reach them with kubectl port-forward"))
    elif _address_kind(str(host)) != "loopback":
        problems.append(SpecError(f"{field}.rayStartParams.dashboard-host", 'must be "127.0.0.1": '
                                  "the dashboard and Jobs API run code for whoever reaches them; "
                                  "reach them with kubectl port-forward", host))
    for key, value in (("serviceType", head.get("serviceType")),
                       ("headService.spec.type",
                        _mapping(_mapping(head.get("headService")).get("spec")).get("type"))):
        if value in PUBLIC_SERVICE_TYPES:
            problems.append(SpecError(f"{field}.{key}", "must be ClusterIP: a "
                                      f"{value} Service exposes the Ray head outside Kubernetes; "
                                      "use kubectl port-forward", value))
    if not any(_mlflow_servers_in(c) for c in _containers(head)):
        problems.append(SpecError(f"{field}.template.spec.containers", "must run the MLflow "
                                  "tracking server in the head pod (a sidecar: mlflow server "
                                  "--host 127.0.0.1 --app-name basic-auth ...)",
                                  [_mapping(c).get("name") for c in _containers(head)]))
    return problems


def _pod_auth_problems(field: str, group: dict, auth_by_operator: bool) -> list[SpecError]:
    """RAY_AUTH_MODE=token on every container; the Ray container (the first, where KubeRay
    starts Ray) also gets the token from a Secret. With ``spec.authOptions.mode: token``
    (KubeRay >= 1.5.1) the operator sets both, so only contradicting settings are errors."""
    problems = []
    pod = _mapping(_mapping(group.get("template")).get("spec"))
    containers = _containers(group)
    if not containers:
        return [SpecError(f"{field}.template.spec.containers", "must list the Ray container",
                          pod.get("containers", _NOTHING))]
    for j, container in enumerate(containers):
        where = f"{field}.template.spec.containers[{j}]"
        env = [e for e in container.get("env") or [] if isinstance(e, dict)]
        by_name = {e.get("name"): (k, e) for k, e in enumerate(env)}
        if "RAY_AUTH_MODE" in by_name:
            k, entry = by_name["RAY_AUTH_MODE"]
            if entry.get("value") != "token":
                problems.append(SpecError(f"{where}.env[{k}].value", "RAY_AUTH_MODE must be "
                                          "token: without token authentication anyone who "
                                          "reaches the pods can run code on the cluster",
                                          entry.get("value", entry.get("valueFrom", _NOTHING))))
        elif not auth_by_operator:
            problems.append(SpecError(f"{where}.env", "must set RAY_AUTH_MODE=token on every "
                                      "container (or spec.authOptions.mode: token with KubeRay "
                                      ">= 1.5.1)", container.get("name", _NOTHING)))
        literal = "RAY_AUTH_TOKEN" in by_name and "value" in by_name["RAY_AUTH_TOKEN"][1]
        if literal:
            k, entry = by_name["RAY_AUTH_TOKEN"]
            problems.append(SpecError(f"{where}.env[{k}].value", "must not hold the auth token "
                                      "itself: use valueFrom.secretKeyRef (a Kubernetes Secret)",
                                      f"<{len(str(entry['value']))} characters>"))
        elif j == 0 and not auth_by_operator and not _token_from_secret(container, pod, by_name):
            problems.append(SpecError(f"{where}.env", "must give the Ray container the token "
                                      "from a Secret: RAY_AUTH_TOKEN with valueFrom.secretKeyRef, "
                                      "or RAY_AUTH_TOKEN_PATH to a file of a mounted Secret volume",
                                      sorted(str(n) for n in by_name)))
    return problems


def _token_from_secret(container: dict, pod: dict, env: dict) -> bool:
    if "RAY_AUTH_TOKEN" in env:
        return bool(_mapping(env["RAY_AUTH_TOKEN"][1].get("valueFrom")).get("secretKeyRef"))
    if "RAY_AUTH_TOKEN_PATH" not in env:
        return False
    token_path = str(env["RAY_AUTH_TOKEN_PATH"][1].get("value", ""))
    secret_volumes = {v.get("name") for v in pod.get("volumes") or []
                      if isinstance(v, dict) and v.get("secret")}
    return any(isinstance(m, dict) and m.get("name") in secret_volumes
               and token_path.startswith(str(m.get("mountPath", "")).rstrip("/") + "/")
               for m in container.get("volumeMounts") or [])


def _containers(group: dict) -> list[dict]:
    containers = _mapping(_mapping(group.get("template")).get("spec")).get("containers")
    return [c for c in containers if isinstance(c, dict)] if isinstance(containers, list) else []


def _mlflow_servers_in(container: dict) -> list[list[str]]:
    words = [str(w) for w in (container.get("command") or []) + (container.get("args") or [])]
    scripts = [c for w in words if _looks_like_script(w) for c in _simple_commands(w)]
    return list(_invocations_in([words] + scripts, "mlflow", ("server", "ui")))


# --------------------------------------------------------------------------------------------
# Shared: MLflow, shell commands, addresses
# --------------------------------------------------------------------------------------------

def _mlflow_server_problems(field: str, args: list[str]) -> list[SpecError]:
    problems = []
    host = _option(args, "--host", "-h")
    kind = _address_kind(host) if host is not None else None
    if host is None:
        problems.append(SpecError(field, "mlflow server must pass --host 127.0.0.1 (or a "
                                  "private address)", " ".join(["mlflow", "server", *args])))
    elif kind in ("any", "public"):
        problems.append(SpecError(field, "mlflow server --host must be 127.0.0.1 or a private "
                                  "address, never all interfaces or a public one: reach the UI "
                                  "through port forwarding", host))
    elif kind == "unknown":
        problems.append(SpecError(field, "mlflow server --host must be a literal loopback or "
                                  "private address (a name or shell expression cannot be "
                                  "checked)", host))
    app = _option(args, "--app-name")
    if app != "basic-auth":
        problems.append(SpecError(field, "mlflow server must pass --app-name basic-auth, so "
                                  "every request needs a user and password",
                                  app if app is not None else _NOTHING))
    return problems


def _commands(config: dict) -> Iterator[tuple[str, str]]:
    """(field path, command) for every shell command Ray runs from this config."""
    for key in COMMAND_LISTS:
        for i, command in _indexed_strings(config.get(key)):
            yield f"{key}[{i}]", command
    for name, node_type in _mapping(config.get("available_node_types")).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for i, command in _indexed_strings(_mapping(node_type).get(key)):
                yield f"available_node_types.{name}.{key}[{i}]", command


def _ray_starts(config: dict) -> Iterator[tuple[str, str, list[str], bool]]:
    """(field, command, arguments, is head) for every `ray start` in the start commands."""
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for i, command in _indexed_strings(config.get(key)):
            for args in _invocations_in(_simple_commands(command), "ray", ("start",)):
                yield f"{key}[{i}]", command, args, "--head" in args


def _mlflow_servers(command: str) -> Iterator[list[str]]:
    return _invocations_in(_simple_commands(command), "mlflow", ("server", "ui"))


def _uv_installs(command: str) -> bool:
    for words in _simple_commands(command):
        for i, word in enumerate(words[:-1]):
            if os.path.basename(word) == "uv" and (
                    words[i + 1] == "sync" or words[i + 1:i + 3] == ["pip", "install"]):
                return True
    return False


def _simple_commands(command: str) -> list[list[str]]:
    """Split a shell command line into simple commands (lists of words).

    Operators (; && || | & ( ) redirections) separate commands; a quoted word that is itself
    a script (``bash -c '...'``) is split too, so nothing hides inside it.
    """
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()<>")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: the best we can do is split on blanks
        tokens = command.split()
    result: list[list[str]] = []
    current: list[str] = []
    for token in tokens:
        if token and all(ch in ";&|()<>" for ch in token):
            if current:
                result.append(current)
            current = []
            continue
        if _looks_like_script(token) and token != command:
            result.extend(_simple_commands(token))
        current.append(token)
    if current:
        result.append(current)
    return result


def _looks_like_script(word: str) -> bool:
    return any(ch.isspace() for ch in word)


def _invocations_in(commands: list[list[str]], program: str,
                    subcommands: tuple[str, ...]) -> Iterator[list[str]]:
    """The arguments after ``program subcommand`` (``/path/to/ray start ...`` counts)."""
    for words in commands:
        for i, word in enumerate(words[:-1]):
            if os.path.basename(word) == program and words[i + 1] in subcommands:
                yield words[i + 2:]
                break


def _option(args: list[str], *names: str) -> str | None:
    for i, arg in enumerate(args):
        for name in names:
            if arg == name:
                return args[i + 1] if i + 1 < len(args) else ""
            if name.startswith("--") and arg.startswith(name + "="):
                return arg[len(name) + 1:]
    return None


def _address_kind(host: str) -> str:
    """loopback | private | any (0.0.0.0, ::) | public | unknown (a name or an expression)."""
    host = host.strip().strip("\"'").strip("[]")
    if host == "localhost":
        return "loopback"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    if address.is_unspecified:
        return "any"
    if address.is_loopback:
        return "loopback"
    return "private" if address.is_private else "public"


def _port_range(rule: dict) -> tuple[int, int] | None:
    protocol = str(rule.get("IpProtocol", "")).lower()
    if protocol in ("-1", "all"):
        return 0, 65535
    if protocol not in ("tcp", "udp", "6", "17"):
        return None
    low, high = rule.get("FromPort", 0), rule.get("ToPort", 65535)
    if not isinstance(low, int) or not isinstance(high, int) or low == -1:
        return 0, 65535
    return low, high


def _cidrs(rule: dict) -> list[str]:
    ranges = [(r, "CidrIp") for r in rule.get("IpRanges") or []]
    ranges += [(r, "CidrIpv6") for r in rule.get("Ipv6Ranges") or []]
    return [str(r[key]) for r, key in ranges if isinstance(r, dict) and key in r]


def _is_everywhere(cidr: str) -> bool:
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _same_path(remote: str, paths: set[str]) -> bool:
    def norm(p: str) -> str:
        return str(p).replace("$HOME", "~").rstrip("/")

    remote = norm(remote)
    return any(remote == norm(p) for p in paths) or remote.endswith("/.ray/auth_token")


def _default_note(raw: dict, config: dict, key: str) -> str:
    if key not in raw and key in config:
        return f" (the file does not set {key}, so Ray's default for the provider applies)"
    return ""


def _exists(document: Any, path: list) -> bool:
    for part in path:
        if isinstance(document, dict) and part in document:
            document = document[part]
        elif isinstance(document, list) and isinstance(part, int) and part < len(document):
            document = document[part]
        else:
            return False
    return True


def _dotted(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<file>"


def _given(value: Any) -> Any:
    return _NOTHING if value is None else value


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _indexed_strings(value: Any) -> list[tuple[int, str]]:
    return [(i, v) for i, v in enumerate(value) if isinstance(v, str)] \
        if isinstance(value, list) else []

