#!/usr/bin/env python3
"""Assertions on `helm template` output of charts/portcullis (run by scripts/e2e-helm).

    check_render.py CASE RENDERED.yaml [REPO_ROOT]

CASE is `default`, `custom` (charts/portcullis/ci/custom-values.yaml), `custom-served` (the
same once the cluster serves GatewayClass), `single` (one replica,
no leader election, no GatewayClass) or `long-names`. Prints one `ok:` line per check; exits 1
on the first failure. The RBAC rules are compared with the exact table below, which is what
the controller's code calls (see the comments in templates/rbac.yaml).
"""

import re
import sys
from pathlib import Path

import yaml

READ = {"get", "list", "watch"}
WRITE = {"create", "update", "patch", "delete"}
GW = "gateway.networking.k8s.io"

# (apiGroup, resource) -> verbs, for the controller's ClusterRole.
CONTROLLER_RULES = {
    (GW, "gatewayclasses"): READ,
    (GW, "gateways"): READ,
    (GW, "httproutes"): READ,
    (GW, "grpcroutes"): READ,
    (GW, "referencegrants"): READ,
    # Read for certificates and CA bundles; written for each Gateway's delivered config Secrets.
    ("", "secrets"): READ | WRITE,
    ("", "configmaps"): READ,
    ("", "namespaces"): READ,
    ("discovery.k8s.io", "endpointslices"): READ,
    # Its Gateways' data-plane pods, listed to ask their /readyz (listener Programmed).
    ("", "pods"): {"list"},
    (GW, "gatewayclasses/status"): {"update", "patch"},
    (GW, "gateways/status"): {"update", "patch"},
    (GW, "httproutes/status"): {"update", "patch"},
    (GW, "grpcroutes/status"): {"update", "patch"},
    (GW, "gateways/finalizers"): {"update"},
    ("", "services"): READ | WRITE,
    ("", "serviceaccounts"): READ | WRITE,
    ("apps", "deployments"): READ | WRITE,
    ("policy", "poddisruptionbudgets"): READ | WRITE,
    # Per Gateway, a Role reading its config Secrets by name, bound to its ServiceAccount.
    ("rbac.authorization.k8s.io", "roles"): READ | WRITE,
    ("rbac.authorization.k8s.io", "rolebindings"): READ | WRITE,
    # Only to delete the ClusterRoleBindings version 0.1 made per Gateway.
    ("rbac.authorization.k8s.io", "clusterrolebindings"): READ | {"delete"},
}

# Kinds that are not namespaced among those the chart renders.
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "GatewayClass", "CustomResourceDefinition"}

STANDARD_LABELS = [
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
]

passed = 0


def ok(what):
    global passed
    passed += 1
    print(f"  ok: {what}")


def fail(what):
    print(f"  FAIL: {what}", file=sys.stderr)
    sys.exit(1)


def check(cond, what):
    if not cond:
        fail(what)
    ok(what)


def eq(got, want, what):
    if got != want:
        fail(f"{what}: got {got!r}, want {want!r}")
    ok(what)


class Render:
    def __init__(self, path):
        self.docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]

    def kinds(self, kind):
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind, name=None):
        found = [d for d in self.kinds(kind) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            fail(f"expected one {kind} {name or ''}, found {len(found)}")
        return found[0]


def rule_table(role, what):
    """(apiGroup, resource) -> verbs, refusing wildcards, resourceNames and duplicates."""
    table = {}
    for rule in role.get("rules", []):
        groups, resources, verbs = rule.get("apiGroups", []), rule.get("resources", []), rule.get("verbs", [])
        for field in (groups, resources, verbs):
            if "*" in field or any("*" in x for x in field):
                fail(f"{what}: wildcard in {rule}")
        if rule.get("nonResourceURLs"):
            fail(f"{what}: nonResourceURLs in {rule}")
        if rule.get("resourceNames"):
            fail(f"{what}: unexpected resourceNames in {rule}")
        for g in groups:
            for r in resources:
                if (g, r) in table:
                    fail(f"{what}: {g}/{r} appears in two rules")
                table[(g, r)] = set(verbs)
    return table


def check_common(render, namespace, release):
    """Checks every rendering must pass."""
    for doc in render.docs:
        kind, meta = doc["kind"], doc["metadata"]
        name = meta["name"]
        if kind == "CustomResourceDefinition":
            continue
        if len(name) > 63:
            fail(f"{kind} {name}: name longer than 63")
        if kind in CLUSTER_SCOPED:
            if "namespace" in meta:
                fail(f"{kind} {name} is cluster-scoped but has a namespace")
        elif meta.get("namespace") != namespace:
            fail(f"{kind} {name}: namespace {meta.get('namespace')!r}, want the release's {namespace!r}")
        labels = meta.get("labels") or {}
        missing = [label for label in STANDARD_LABELS if label not in labels]
        if missing:
            fail(f"{kind} {name}: missing labels {missing}")
        if labels["app.kubernetes.io/instance"] != release:
            fail(f"{kind} {name}: instance label {labels['app.kubernetes.io/instance']!r}")
        for value in labels.values():
            if len(str(value)) > 63:
                fail(f"{kind} {name}: label value {value!r} longer than 63")
    ok(f"{len(render.docs)} objects: names <= 63, namespaced ones in {namespace}, standard labels")

    # RBAC: no wildcard anywhere; no write verb on ConfigMaps; Secrets written only by the
    # controller's ClusterRole (each Gateway's delivered config), never by another role.
    secret_writers = []
    for kind in ("ClusterRole", "Role"):
        for role in render.kinds(kind):
            name = role["metadata"]["name"]
            for rule in role.get("rules", []):
                everything = rule.get("apiGroups", []) + rule.get("resources", []) + rule.get("verbs", [])
                if any("*" in x for x in everything):
                    fail(f"{kind} {name}: wildcard in {rule}")
                resources, writes = set(rule.get("resources", [])), set(rule["verbs"]) - READ
                if "configmaps" in resources and writes:
                    fail(f"{kind} {name}: writes ConfigMaps: {rule}")
                if "secrets" in resources and writes:
                    secret_writers.append((kind, name, role["metadata"]["labels"].get("app.kubernetes.io/component")))
                if set(rule.get("verbs", [])) & {"escalate", "bind", "impersonate", "deletecollection"}:
                    fail(f"{kind} {name}: dangerous verb in {rule}")
    if len(secret_writers) != 1 or secret_writers[0][0] != "ClusterRole" or secret_writers[0][2] != "controller":
        fail(f"Secret writes allowed to {secret_writers}, want the controller's ClusterRole only")
    ok("RBAC: no wildcards, no ConfigMap writes, Secret writes only by the controller, no bind/escalate/impersonate")


def controller_parts(render, fullname):
    deployment = render.one("Deployment", f"{fullname}-controller")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_map = render.one("ConfigMap", f"{fullname}-controller-config")
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    return deployment, pod, container, config


def check_controller_pod(render, fullname, sa, replicas, admin_port):
    deployment, pod, container, _ = controller_parts(render, fullname)
    eq(deployment["spec"]["replicas"], replicas, "controller replicas")
    eq(pod["serviceAccountName"], sa, "controller pod runs as its ServiceAccount")
    eq(pod.get("automountServiceAccountToken"), True, "controller pod mounts its token")
    eq(render.one("ServiceAccount", sa).get("automountServiceAccountToken"), False,
       "the ServiceAccount itself does not automount (only the controller pod asks for it)")
    args = container["args"]
    check(args[-3:] == ["controller", "--config", "/etc/portcullis/config.yaml"],
          f"controller args run `portcullis controller --config`: {args}")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    check(mounts["/etc/portcullis"]["readOnly"] is True, "config mounted read-only at /etc/portcullis")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts["/etc/portcullis"]["name"]]
    eq(volume["configMap"]["name"], f"{fullname}-controller-config", "config volume is the ConfigMap")
    env = {e["name"]: e for e in container["env"]}
    eq(env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name", "POD_NAME (lease identity)")
    check("checksum/config" in deployment["spec"]["template"]["metadata"]["annotations"],
          "a config change rolls the controller (checksum/config)")
    # Security.
    psc, csc = pod["securityContext"], container["securityContext"]
    check(psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, "controller pod non-root")
    eq(psc["seccompProfile"]["type"], "RuntimeDefault", "controller seccomp RuntimeDefault")
    check(csc["readOnlyRootFilesystem"] is True, "controller read-only root filesystem")
    check(csc["allowPrivilegeEscalation"] is False, "controller: no privilege escalation")
    eq(csc["capabilities"], {"drop": ["ALL"]}, "controller drops every capability")
    # Probes on the admin endpoint.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    eq(ports["admin"], admin_port, "controller admin port")
    eq((container["livenessProbe"]["httpGet"]["path"], container["livenessProbe"]["httpGet"]["port"]),
       ("/healthz", "admin"), "controller liveness probe /healthz")
    eq((container["readinessProbe"]["httpGet"]["path"], container["readinessProbe"]["httpGet"]["port"]),
       ("/readyz", "admin"), "controller readiness probe /readyz")
    check("limits" in container["resources"] and "requests" in container["resources"],
          "controller has requests and limits")


def check_rbac(render, fullname, sa, namespace, lease, election):
    role = render.one("ClusterRole", f"{fullname}-controller")
    eq(rule_table(role, "controller ClusterRole"), CONTROLLER_RULES,
       "controller ClusterRole is exactly the least-privilege table")
    binding = render.one("ClusterRoleBinding", f"{fullname}-controller")
    eq(binding["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": f"{fullname}-controller"}, "ClusterRoleBinding -> controller ClusterRole")
    eq(binding["subjects"], [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
       "ClusterRoleBinding subject is the controller ServiceAccount")
    eq([r["metadata"]["name"] for r in render.kinds("ClusterRole")], [f"{fullname}-controller"],
       "one ClusterRole, the controller's (no data-plane ClusterRole: the controller makes a Role per Gateway)")
    roles = render.kinds("Role")
    if not election:
        eq(roles, [], "no leader election: no Lease Role")
        return
    (lease_role,) = roles
    eq(lease_role["metadata"]["namespace"], namespace, "Lease Role in the release namespace")
    rules = sorted((sorted(r["verbs"]), r.get("resourceNames")) for r in lease_role["rules"])
    eq(rules, [(["create"], None), (["get", "update"], [lease])],
       f"Lease Role: create, and get/update of {lease} only")
    for r in lease_role["rules"]:
        eq((r["apiGroups"], r["resources"]), (["coordination.k8s.io"], ["leases"]), "Lease Role covers leases only")
    (rb,) = render.kinds("RoleBinding")
    eq(rb["subjects"], [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}],
       "Lease RoleBinding subject is the controller ServiceAccount")


def workspace_version(root):
    text = (Path(root) / "Cargo.toml").read_text()
    match = re.search(r'\[workspace\.package\][^\[]*?\nversion\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else None


def case_default(render, root):
    ns, fullname, sa = "portcullis-system", "portcullis", "portcullis-controller"
    check_common(render, ns, "portcullis")
    check_controller_pod(render, fullname, sa, replicas=2, admin_port=9902)
    check_rbac(render, fullname, sa, ns, lease="portcullis-controller", election=True)
    eq(render.kinds("CustomResourceDefinition"), [], "no CRDs by default")
    gc = render.one("GatewayClass")
    eq(gc["metadata"]["name"], "portcullis", "GatewayClass name")
    eq(gc["spec"]["controllerName"], "portcullis.dev/gateway-controller", "GatewayClass controllerName")
    check("helm.sh/hook" not in (gc["metadata"].get("annotations") or {}), "GatewayClass is a release object")
    pdb = render.one("PodDisruptionBudget")
    eq(pdb["spec"]["minAvailable"], 1, "controller PDB minAvailable 1")
    deployment, _, container, config = controller_parts(render, fullname)
    eq(pdb["spec"]["selector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"],
       "PDB selects the controller pods")

    # The controller configuration, in config.rs's schema.
    eq(set(config), {"controllerName", "adminAddress", "leaderElection", "dataPlane"}, "config top-level keys")
    eq(config["adminAddress"], "0.0.0.0:9902", "controller admin bound on 0.0.0.0 (probes)")
    election = config["leaderElection"]
    eq((election["enabled"], election["leaseName"], election["leaseNamespace"]),
       (True, "portcullis-controller", ns), "leader election on, Lease in the release namespace")
    plane = config["dataPlane"]
    version = workspace_version(root)
    eq(plane["image"], f"ghcr.io/portcullis-dev/portcullis:{version}",
       "data-plane image = the controller's built-in default (appVersion = workspace version)")
    eq(container["image"], plane["image"], "controller and data plane run one image")
    eq(plane["replicas"], 1, "data-plane replicas")
    res = plane["resources"]
    eq(res["requests"], res["limits"], "data-plane requests = limits (Guaranteed QoS)")
    check(re.fullmatch(r"[1-9][0-9]*", res["requests"]["cpu"]) is not None,
          f"data-plane CPU is a whole number of cores, as a string: {res['requests']['cpu']!r}")
    eq(plane["seccompProfile"], {"type": "RuntimeDefault"}, "data-plane seccomp RuntimeDefault by default")
    check("securityContext" not in plane,
          "no securityContext override: the controller computes it per Gateway (NET_BIND_SERVICE below 1024)")
    eq(plane["hostNetwork"], False, "hostNetwork off by default")
    eq(plane["service"], {"type": "LoadBalancer", "annotations": {}, "labels": {}}, "Service LoadBalancer")
    check("clusterRole" not in plane, "no dataPlane.clusterRole in the config (config.rs refuses it)")
    eq(plane["adminPort"], 9901, "data-plane admin port 9901")
    eq(plane["nodeSelector"], {"kubernetes.io/os": "linux"}, "data plane on Linux nodes")
    eq(plane["podDisruptionBudget"], {"maxUnavailable": 1}, "a data-plane PDB per Gateway, maxUnavailable 1")
    check(plane["runAsUser"] != 0, "data plane non-root")
    kinds = sorted(d["kind"] for d in render.docs)
    eq(kinds, sorted(["PodDisruptionBudget", "ServiceAccount", "ConfigMap", "ClusterRole",
                      "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "GatewayClass"]),
       "default objects")


def case_custom(render, root):
    ns, fullname, sa = "gw-system", "edge-gateways", "edge-controller-sa"
    check_common(render, ns, "edge")
    check_controller_pod(render, fullname, sa, replicas=3, admin_port=19902)
    check_rbac(render, fullname, sa, ns, lease="edge-leader", election=True)
    crds = render.kinds("CustomResourceDefinition")
    eq(len(crds), 12, "crds.install: the 12 Gateway API v1.4.0 experimental CRDs")
    for crd in crds:
        annotations = crd["metadata"]["annotations"]
        if annotations.get("helm.sh/resource-policy") != "keep" or \
                annotations.get("gateway.networking.k8s.io/bundle-version") != "v1.4.0":
            fail(f"CRD {crd['metadata']['name']}: {annotations}")
    ok("every CRD is v1.4.0 and kept on uninstall")
    eq(render.kinds("GatewayClass"), [],
       "crds.install on a cluster without the API: no GatewayClass yet (the next upgrade creates it)")
    pdb = render.one("PodDisruptionBudget")
    eq(pdb["spec"]["minAvailable"], 2, "PDB minAvailable")
    for doc in render.docs:
        if doc["kind"] != "CustomResourceDefinition" and doc["metadata"]["labels"].get("team") != "platform":
            fail(f"{doc['kind']} {doc['metadata']['name']}: no commonLabels")
    ok("commonLabels on every object")

    deployment, pod, container, config = controller_parts(render, fullname)
    eq(container["image"], "registry.example.com/mirror/portcullis:0.1.0-rc1", "controller image")
    eq(pod["imagePullSecrets"], [{"name": "regcred"}], "controller imagePullSecrets")
    eq(pod["priorityClassName"], "system-cluster-critical", "priorityClassName")
    eq(pod["tolerations"], [{"key": "CriticalAddonsOnly", "operator": "Exists"}], "controller tolerations")
    env = {e["name"]: e.get("value") for e in container["env"]}
    eq(env["RUST_LOG"], "debug", "controller log level")
    check(container["args"][:2] == ["--log-format", "text"], "controller log format")
    eq(config["adminAddress"], "0.0.0.0:19902", "controller admin address")
    election = config["leaderElection"]
    eq((election["leaseName"], election["leaseNamespace"], election["leaseDurationSeconds"],
        election["renewDeadlineSeconds"], election["retryPeriodSeconds"]),
       ("edge-leader", ns, 20, 12, 3), "lease settings")
    eq(config["controllerName"], "example.com/portcullis-internal", "config controllerName")
    plane = config["dataPlane"]
    eq(plane["image"], "registry.example.com/mirror/portcullis-dataplane@sha256:"
       "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "data-plane image by digest")
    eq(plane["imagePullPolicy"], "Always", "data-plane pull policy")
    eq(plane["imagePullSecrets"], [{"name": "regcred"}], "data-plane imagePullSecrets")
    eq(plane["replicas"], 3, "data-plane replicas")
    eq(plane["resources"], {"requests": {"cpu": "4", "memory": "1Gi"}, "limits": {"cpu": "4", "memory": "1Gi"}},
       "numeric CPU 4 reaches the config as the string \"4\" (Quantity)")
    eq(plane["seccompProfile"], {"type": "Localhost", "localhostProfile": "profiles/portcullis-io-uring.json"},
       "Localhost seccomp profile")
    eq(plane["hostNetwork"], True, "hostNetwork")
    eq(plane["nodeSelector"], {"kubernetes.io/os": "linux", "node-role.example.com/edge": "true"},
       "nodeSelector (merged with the Linux default)")
    eq(plane["tolerations"][0]["key"], "dedicated", "data-plane tolerations")
    check("podAntiAffinity" in plane["affinity"], "data-plane affinity")
    eq(plane["service"], {"type": "NodePort", "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
                          "labels": {"example.com/exposed": "yes"}, "externalTrafficPolicy": "Local"},
       "Service type, annotations, labels, externalTrafficPolicy")
    eq((plane["adminPort"], plane["drainTimeoutSeconds"], plane["terminationGracePeriodSeconds"],
        plane["runAsUser"], plane["runAsGroup"], plane["logFormat"]),
       (19901, 40, 60, 10001, 10001, "text"), "admin port, drain, grace period, uid/gid, log format")
    eq(plane["extraArgs"], ["--idle-timeout", "120s"], "extraArgs")
    eq(plane["env"], [{"name": "RUST_LOG", "value": "info,portcullis_runtime=debug"}], "env")
    check("clusterRole" not in plane, "no dataPlane.clusterRole in the config")
    eq(plane["podDisruptionBudget"], {"minAvailable": "50%"}, "data-plane PDB minAvailable 50%")


def case_single(render, root):
    ns, fullname, sa = "portcullis-system", "portcullis", "portcullis-controller"
    check_common(render, ns, "portcullis")
    check_controller_pod(render, fullname, sa, replicas=1, admin_port=9902)
    check_rbac(render, fullname, sa, ns, lease=None, election=False)
    eq(render.kinds("PodDisruptionBudget"), [], "one replica: no PDB (it would block every drain)")
    eq(render.kinds("GatewayClass"), [], "gatewayClass.create=false: no GatewayClass")
    _, _, _, config = controller_parts(render, fullname)
    eq(config["leaderElection"]["enabled"], False, "leader election off")
    eq(config["dataPlane"]["securityContext"]["capabilities"], {"drop": ["ALL"]},
       "dataPlane.securityContext reaches the config")
    check("affinity" not in config["dataPlane"], "empty affinity is left out")
    check("podDisruptionBudget" not in config["dataPlane"], "dataPlane.podDisruptionBudget.enabled=false: none")


def case_custom_served(render, root):
    """ci/custom-values.yaml once the cluster serves GatewayClass (helm upgrade after the CRDs)."""
    gc = render.one("GatewayClass")
    eq((gc["metadata"]["name"], gc["spec"]["controllerName"]),
       ("portcullis-internal", "example.com/portcullis-internal"), "custom GatewayClass and controllerName")
    eq(gc["metadata"]["annotations"], {"example.com/owner": "platform"}, "GatewayClass annotations, no hook")
    eq(len(render.kinds("CustomResourceDefinition")), 12, "the CRDs stay in the release")


def case_long_names(render, root):
    release = "a-release-name-that-is-long-enough-to-need-truncating"
    check_common(render, "portcullis-system", release)
    names = [d["metadata"]["name"] for d in render.docs]
    check(all(not n.endswith("-") and len(n) <= 63 for n in names), f"truncated names: {names}")


CASES = {"default": case_default, "custom": case_custom, "custom-served": case_custom_served, "single": case_single, "long-names": case_long_names}

if __name__ == "__main__":
    case, path = sys.argv[1], sys.argv[2]
    root = sys.argv[3] if len(sys.argv) > 3 else "."
    CASES[case](Render(path), root)
    print(f"  {case}: {passed} checks passed")
