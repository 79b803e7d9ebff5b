"""Our own policy over rendered objects. Each rule takes the overlay's objects (and the binary when
it must ask it something) and returns violations, one line each; [] means the rule holds.
test_k8s.py runs every rule on every overlay, and each rule once on a broken copy to show it fails.
"""

from __future__ import annotations

import re

from manifests import ROOT, name_of

WORKLOADS = ("Deployment", "StatefulSet")

# Secrets the manifests may reference; k8s/README.md says how to make each one.
DOCUMENTED_SECRETS = {
    "commerce-jwt",
    "commerce-jwks",
    "commerce-service-key-checkout",
    "commerce-service-key-subscriptions",
    "commerce-mongodb",
    "commerce-redis",
    "mongodb-auth",
    "redis-auth",
}
# Variables that carry credentials: only ever from a Secret.
SENSITIVE = re.compile(r"SECRET|PASSWORD|TOKEN|MONGODB_URI|REDIS_URL|_KEY$", re.I)
CREDENTIALS_IN_URL = re.compile(r"://[^/@\s:]+:[^/@\s]+@")

# Environment variables of commerce containers that are not flags of the binary, and why.
NOT_FLAGS = {
    # Read by the binary's logging set-up (crates/platform/src/telemetry.rs), not by clap.
    "COMMERCE_LOG": "crates/platform/src/telemetry.rs",
    # Only referenced as $(POD_NAME) by other variables of the same container.
    "POD_NAME": None,
}
# The standard OpenTelemetry variables, read by the binary's trace set-up (crates/platform/src/
# telemetry.rs and the OTLP exporter), not by clap.
OTEL = re.compile(r"^OTEL_[A-Z_]+$")


def pod_template(obj: dict) -> dict:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def pod_spec(obj: dict) -> dict:
    return pod_template(obj)["spec"]


def workloads(objs, kinds=WORKLOADS):
    return [o for o in objs if o["kind"] in kinds]


def deployments(objs):
    return workloads(objs, ("Deployment",))


def is_commerce(container: dict) -> bool:
    image = container["image"].split("@")[0].rsplit(":", 1)[0]
    return image.rsplit("/", 1)[-1] in ("commerce", "commerce-canary")


def selects(selector: dict, labels: dict) -> bool:
    """matchLabels only (what these manifests use); an empty selector selects everything."""
    match = selector.get("matchLabels", {}) if selector else {}
    if selector and selector.get("matchExpressions"):
        return False
    return all(labels.get(key) == value for key, value in match.items())


def by_kind(objs, kind):
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def subcommand(container: dict) -> tuple:
    """The leading words of args: ("serve",), ("psp", "serve"), ("loyalty", "reconcile")."""
    words = []
    for arg in container.get("args") or []:
        if arg.startswith("-"):
            break
        words.append(arg)
    return tuple(words[:2]) if words[:1] != ["serve"] else ("serve",)


def effective_env(container: dict, objs) -> dict:
    """Name -> value (None when it comes from a Secret or the downward API), ConfigMaps first as
    the kubelet does."""
    maps = by_kind(objs, "ConfigMap")
    env = {}
    for source in container.get("envFrom", []):
        ref = source.get("configMapRef")
        if ref and ref["name"] in maps:
            env.update(maps[ref["name"]].get("data", {}))
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


# --- the rules ------------------------------------------------------------------------------------


def probes(objs, binary=None):
    """Every Deployment's containers have startup, readiness and liveness probes, all native gRPC
    on the container's API port, each naming a service."""
    out = []
    for dep in deployments(objs):
        for c in pod_spec(dep)["containers"]:
            api = {p["containerPort"] for p in c.get("ports", []) if p.get("name") == "api"}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                grpc = (c.get(kind) or {}).get("grpc")
                if not grpc:
                    out.append(f"{name_of(dep)}: {c['name']} has no gRPC {kind}")
                elif grpc.get("port") not in api:
                    out.append(f"{name_of(dep)}: {kind} port {grpc.get('port')} is not the API port")
                elif not grpc.get("service"):
                    out.append(f"{name_of(dep)}: {kind} names no service")
    return out


def probes_name_registered_services(objs, binary):
    """Every gRPC probe names a service the binary registers with grpc.health.v1 (asked of a
    running process), and one of the module the Deployment runs."""
    out = []
    for dep in deployments(objs):
        for c in pod_spec(dep)["containers"]:
            args = c.get("args") or []
            role = "psp" if subcommand(c) == ("psp", "serve") else "serve"
            module = None
            if "--services" in args:
                module = args[args.index("--services") + 1]
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                service = ((c.get(kind) or {}).get("grpc") or {}).get("service")
                if not service:
                    continue
                status = binary.health(role, service)
                if status == "NOT_FOUND":
                    out.append(f"{name_of(dep)}: {kind} names {service}, which "
                               f"`commerce {' '.join(subcommand(c))}` does not register")
                elif module and "," not in module and not service.startswith(f"commerce.{module}.v1."):
                    out.append(f"{name_of(dep)}: {kind} names {service}, not a {module} service")
    return out


def resources(objs, binary=None):
    """Every container of every workload requests CPU and memory and has a memory limit."""
    out = []
    for w in workloads(objs, WORKLOADS + ("Job", "CronJob")):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            r = c.get("resources") or {}
            for need in ("requests.cpu", "requests.memory", "limits.memory"):
                section, key = need.split(".")
                if key not in (r.get(section) or {}):
                    out.append(f"{name_of(w)}: {c['name']} has no {need}")
    return out


def non_root(objs, binary=None):
    """Every pod runs as non-root with seccomp RuntimeDefault; every container has a read-only
    root file system, no privilege escalation and drops ALL capabilities."""
    out = []
    for w in workloads(objs, WORKLOADS + ("Job", "CronJob")):
        spec = pod_spec(w)
        pod = spec.get("securityContext") or {}
        if pod.get("runAsNonRoot") is not True or not pod.get("runAsUser"):
            out.append(f"{name_of(w)}: pod does not run as a non-root user")
        if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            out.append(f"{name_of(w)}: pod has no RuntimeDefault seccomp profile")
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext") or {}
            if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
                out.append(f"{name_of(w)}: {c['name']} runs as root")
            if sc.get("readOnlyRootFilesystem") is not True:
                out.append(f"{name_of(w)}: {c['name']} root file system is writable")
            if sc.get("allowPrivilegeEscalation") is not False:
                out.append(f"{name_of(w)}: {c['name']} allows privilege escalation")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                out.append(f"{name_of(w)}: {c['name']} does not drop ALL capabilities")
    return out


def disruption_budgets(objs, binary=None):
    """Every Deployment and StatefulSet is covered by a PodDisruptionBudget."""
    pdbs = [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    out = []
    for w in workloads(objs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        if not any(selects(p["spec"]["selector"], labels) for p in pdbs):
            out.append(f"{name_of(w)}: no PodDisruptionBudget selects its pods")
    return out


def autoscaling(objs, binary=None, min_stable=3):
    """Every Deployment has a CPU HorizontalPodAutoscaler with a scale-down behaviour; stable
    tracks keep at least `min_stable` replicas (prod and canary: 3). Not for dev (one replica)."""
    hpas = {
        h["spec"]["scaleTargetRef"]["name"]: h
        for h in objs
        if h["kind"] == "HorizontalPodAutoscaler" and h["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    }
    out = []
    for dep in deployments(objs):
        hpa = hpas.get(dep["metadata"]["name"])
        if not hpa:
            out.append(f"{name_of(dep)}: no HorizontalPodAutoscaler")
            continue
        if not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"].get("metrics", [])):
            out.append(f"{name_of(hpa)}: does not scale on CPU")
        if "scaleDown" not in (hpa["spec"].get("behavior") or {}):
            out.append(f"{name_of(hpa)}: no scale-down behaviour")
        track = dep["spec"]["template"]["metadata"]["labels"].get("commerce.dev/track")
        is_psp = dep["metadata"]["name"] == "psp"
        if track == "stable" and not is_psp and hpa["spec"].get("minReplicas", 1) < min_stable:
            out.append(f"{name_of(hpa)}: minReplicas {hpa['spec'].get('minReplicas', 1)} < {min_stable}")
        if dep["spec"].get("replicas") is not None:
            out.append(f"{name_of(dep)}: sets replicas, which the HPA owns")
    return out


def service_accounts(objs, binary=None):
    """Every workload runs as its own ServiceAccount (not `default`), which mounts no token."""
    accounts = by_kind(objs, "ServiceAccount")
    out = []
    for w in workloads(objs, WORKLOADS + ("Job", "CronJob")):
        spec = pod_spec(w)
        name = spec.get("serviceAccountName", "default")
        sa = accounts.get(name)
        if sa is None:
            out.append(f"{name_of(w)}: runs as ServiceAccount {name}, which is not in the overlay")
        elif sa.get("automountServiceAccountToken") is not False:
            out.append(f"ServiceAccount/{name}: mounts a token")
        if spec.get("automountServiceAccountToken") is True:
            out.append(f"{name_of(w)}: mounts a token")
    return out


def app_protocols(objs, binary=None):
    """Every Service port declares its appProtocol (h2c for the gRPC API ports)."""
    out = []
    for svc in (o for o in objs if o["kind"] == "Service"):
        for port in svc["spec"]["ports"]:
            if not port.get("appProtocol"):
                out.append(f"{name_of(svc)}: port {port.get('name', port['port'])} has no appProtocol")
            elif port.get("name") == "api" and port["appProtocol"] != "kubernetes.io/h2c":
                out.append(f"{name_of(svc)}: API port is not kubernetes.io/h2c")
    return out


def secrets(objs, binary=None):
    """No Secret is committed or inlined: no Secret objects, credentials only by secretKeyRef
    (never in a ConfigMap or an env value, never in a URL), and every Secret referenced is one
    k8s/README.md says how to make."""
    readme = (ROOT / "k8s" / "README.md").read_text()
    out = [f"{name_of(o)}: a Secret in the manifests" for o in objs if o["kind"] == "Secret"]
    for cm in (o for o in objs if o["kind"] == "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            if SENSITIVE.search(key) and not key.endswith(("_FILE", "_DATABASE")):
                out.append(f"{name_of(cm)}: {key} is a credential in a ConfigMap")
            if CREDENTIALS_IN_URL.search(str(value)):
                out.append(f"{name_of(cm)}: {key} has credentials in a URL")
    referenced = set()
    for w in workloads(objs, WORKLOADS + ("Job", "CronJob")):
        spec = pod_spec(w)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for var in c.get("env", []):
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    referenced.add(ref["name"])
                elif SENSITIVE.search(var["name"]) and not var["name"].endswith("_FILE"):
                    out.append(f"{name_of(w)}: {var['name']} is not taken from a Secret")
                if CREDENTIALS_IN_URL.search(str(var.get("value", ""))):
                    out.append(f"{name_of(w)}: {var['name']} has credentials in a URL")
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    referenced.add(source["secretRef"]["name"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                referenced.add(volume["secret"]["secretName"])
    for name in sorted(referenced):
        if name not in DOCUMENTED_SECRETS or f"`{name}`" not in readme:
            out.append(f"Secret {name} is referenced but k8s/README.md does not say how to make it")
    return out


def flags(objs, binary):
    """Every commerce container runs a real subcommand with flags and environment names that
    subcommand accepts (`commerce … --help`); a renamed flag breaks this rule, not a rollout."""
    out = []
    top = binary.subcommands()
    for w in workloads(objs, WORKLOADS + ("Job", "CronJob")):
        for c in pod_spec(w)["containers"]:
            if not is_commerce(c):
                continue
            sub = subcommand(c)
            if not sub or sub[0] not in top or (len(sub) > 1 and sub[1] not in binary.subcommands(sub[0])):
                out.append(f"{name_of(w)}: `commerce {' '.join(c.get('args') or [])}` is no subcommand")
                continue
            accepted = binary.flags(*sub)
            for arg in (c.get("args") or [])[len(sub):]:
                if arg.startswith("--") and arg.split("=", 1)[0] not in accepted:
                    out.append(f"{name_of(w)}: `commerce {' '.join(sub)}` has no flag {arg}")
            names = binary.env_names(*sub)
            for source in c.get("envFrom", []):
                if "configMapRef" in source and source["configMapRef"]["name"] not in by_kind(objs, "ConfigMap"):
                    out.append(f"{name_of(w)}: ConfigMap {source['configMapRef']['name']} is not in the overlay")
            for var in effective_env(c, objs):
                if var in names or OTEL.match(var):
                    continue
                if var in NOT_FLAGS:
                    where = NOT_FLAGS[var]
                    if where is None or var in (ROOT / where).read_text():
                        continue
                out.append(f"{name_of(w)}: `commerce {' '.join(sub)}` reads no {var}")
    return out


def shutdown(objs, binary):
    """Every commerce container pauses in preStop (the kubelet's sleep: no shell in the image),
    and terminationGracePeriodSeconds outlasts the whole shutdown: preStop + --shutdown-delay +
    --shutdown-grace for in-flight calls + as long again for the event drain (`serve`)."""
    out = []
    for dep in deployments(objs):
        spec = pod_spec(dep)
        grace_period = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            if not is_commerce(c):
                continue
            sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
            if not sleep:
                out.append(f"{name_of(dep)}: no preStop sleep")
                continue
            sub = subcommand(c)
            env = effective_env(c, objs)
            grace = int(env.get("COMMERCE_SHUTDOWN_GRACE_SECONDS")
                        or binary.default(sub, "--shutdown-grace-seconds"))
            if sub == ("serve",):
                delay = int(env.get("COMMERCE_SHUTDOWN_DELAY_SECONDS")
                            or binary.default(sub, "--shutdown-delay-seconds"))
                needed = sleep + delay + 2 * grace
            else:
                needed = sleep + grace
            if grace_period <= needed:
                out.append(f"{name_of(dep)}: terminationGracePeriodSeconds {grace_period} <= {needed} "
                           f"(preStop {sleep} s and the process's own shutdown)")
    return out


def spread(objs, binary=None):
    """Every Deployment that can run more than one replica spreads across zones and nodes."""
    out = []
    for dep in deployments(objs):
        if dep["spec"].get("replicas") == 1 and dep["spec"].get("strategy", {}).get("type") == "Recreate":
            continue  # the all-in-one: one replica by design
        keys = {t["topologyKey"] for t in pod_spec(dep).get("topologySpreadConstraints", [])}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
            if key not in keys:
                out.append(f"{name_of(dep)}: no topology spread over {key}")
    return out


def scraped(objs, binary=None):
    """Every Deployment's admin port is scraped: Prometheus annotations naming it, or a
    ServiceMonitor selecting a Service with an `admin` port that selects the pods."""
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    services = [o for o in objs if o["kind"] == "Service"]
    out = []
    for dep in deployments(objs):
        template = dep["spec"]["template"]
        admin = {str(p["containerPort"]) for c in template["spec"]["containers"]
                 for p in c.get("ports", []) if p.get("name") == "admin"}
        notes = template["metadata"].get("annotations") or {}
        by_annotation = notes.get("prometheus.io/scrape") == "true" and notes.get("prometheus.io/port") in admin
        by_monitor = any(
            selects(m["spec"]["selector"], s["metadata"].get("labels", {}))
            and selects({"matchLabels": s["spec"].get("selector", {})}, template["metadata"]["labels"])
            and any(p.get("name") == "admin" for p in s["spec"]["ports"])
            for m in monitors for s in services
        )
        if not admin or not (by_annotation or by_monitor):
            out.append(f"{name_of(dep)}: its admin port (/metrics) is not scraped")
    return out


def network_policies(objs, binary=None):
    """The namespace denies by default (both directions), and every pod is admitted by an
    ingress policy that names its sources (no rule open to everyone)."""
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"]
    out = []
    if not any(p["spec"]["podSelector"] == {} and set(p["spec"].get("policyTypes", [])) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies):
        out.append("no default-deny NetworkPolicy (empty podSelector, Ingress and Egress, no rules)")
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            if not rule.get("from") or any(peer == {} for peer in rule["from"]):
                out.append(f"{name_of(p)}: an ingress rule open to every source")
        for rule in p["spec"].get("egress", []):
            if not rule.get("to") or any(peer == {} for peer in rule["to"]):
                out.append(f"{name_of(p)}: an egress rule open to every destination")
    for w in workloads(objs):
        labels = w["spec"]["template"]["metadata"]["labels"]
        if not any("Ingress" in p["spec"].get("policyTypes", []) and p["spec"].get("ingress")
                   and selects(p["spec"]["podSelector"], labels) for p in policies):
            out.append(f"{name_of(w)}: no ingress policy admits anything to its pods")
    return out


RULES = {
    "probes": probes,
    "probes_name_registered_services": probes_name_registered_services,
    "resources": resources,
    "non_root": non_root,
    "disruption_budgets": disruption_budgets,
    "autoscaling": autoscaling,
    "service_accounts": service_accounts,
    "app_protocols": app_protocols,
    "secrets": secrets,
    "flags": flags,
    "shutdown": shutdown,
    "spread": spread,
    "scraped": scraped,
    "network_policies": network_policies,
}
# Where each rule applies (dev is the one-replica all-in-one: no autoscaler).
OVERLAYS_OF = {"autoscaling": ["staging", "prod", "canary"]}
MIN_STABLE = {"staging": 2, "prod": 3, "canary": 3}


def check(rule: str, overlay: str, objs, binary):
    if rule == "autoscaling":
        return autoscaling(objs, binary, MIN_STABLE[overlay])
    return RULES[rule](objs, binary)

