"""scripts/k8s-check: every overlay renders, validates (Kubernetes 1.33 strict + the committed CRD
schemas) and keeps our policy; each policy rule is shown to fail on a broken object; the image
recipe builds and runs the binary that really exists.

    .venv/bin/python -m unittest discover -s k8s/tests -v
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import unittest
from pathlib import Path

import manifests
import policy
from manifests import ROOT, OVERLAYS, name_of, objects, render, validate

BINARY: manifests.Binary | None = None


def setUpModule():
    global BINARY
    path = Path(os.environ.get("COMMERCE_BIN", ROOT / "target" / "debug" / "commerce"))
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: cargo build --locked --workspace first")
    BINARY = manifests.Binary(path)


def tearDownModule():
    if BINARY:
        BINARY.close()


class Render(unittest.TestCase):
    def test_every_overlay_renders_and_validates(self):
        """kubectl kustomize, then every object against Kubernetes 1.33 (strict) or its CRD schema."""
        for overlay in OVERLAYS:
            with self.subTest(overlay=overlay):
                objs = render(overlay)
                self.assertTrue(objs)
                errors = [f"{name_of(o)}: {e}" for o in objs if (e := validate(o))]
                self.assertEqual(errors, [])

    def test_validation_rejects_unknown_fields_and_unknown_kinds(self):
        objs = objects("canary")
        deployment = next(o for o in objs if o["kind"] == "Deployment")
        deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grcp"] = {}
        self.assertIn("grcp", validate(deployment))
        route = next(o for o in objs if o["kind"] == "HTTPRoute" and o["metadata"]["name"] == "checkout")
        route["spec"]["rules"][0]["backendRefs"][0]["wieght"] = 5
        self.assertIn("wieght", validate(route))
        route = copy.deepcopy(next(o for o in render("canary") if o["kind"] == "HTTPRoute"))
        route["spec"]["rules"][0]["matches"][0]["path"]["type"] = "Prefix"
        self.assertIn("Prefix", validate(route))
        monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
        monitor["spec"]["endpoints"][0]["intervall"] = "5s"
        self.assertIn("intervall", validate(monitor))
        unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
        self.assertIn("no schema", validate(unknown))


class Policy(unittest.TestCase):
    """Each rule holds on every overlay it applies to."""


def _holds(rule):
    def test(self):
        for overlay in policy.OVERLAYS_OF.get(rule, OVERLAYS):
            with self.subTest(overlay=overlay):
                self.assertEqual(policy.check(rule, overlay, objects(overlay), BINARY), [])
    test.__doc__ = policy.RULES[rule].__doc__
    return test


for _rule in policy.RULES:
    setattr(Policy, f"test_{_rule}", _holds(_rule))


# --- negative tests: one broken copy per rule ---------------------------------------------------


def find(objs, kind, name=None):
    return next(o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name))


def container(objs, name):
    return find(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]


def drop_readiness(objs):
    del container(objs, "loyalty")["readinessProbe"]


def probe_unknown_service(objs):
    container(objs, "checkout")["livenessProbe"]["grpc"]["service"] = "commerce.checkout.v1.NoSuchService"


def probe_other_module(objs):
    container(objs, "checkout")["readinessProbe"]["grpc"]["service"] = "commerce.loyalty.v1.PointsService"


def drop_memory_limit(objs):
    del container(objs, "subscriptions")["resources"]["limits"]["memory"]


def run_as_root(objs):
    find(objs, "Deployment", "checkout")["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] = False
    container(objs, "checkout")["securityContext"]["readOnlyRootFilesystem"] = False


def drop_pdb(objs):
    objs.remove(find(objs, "PodDisruptionBudget", "loyalty"))


def low_min_replicas(objs):
    find(objs, "HorizontalPodAutoscaler", "checkout")["spec"]["minReplicas"] = 1


def automount_token(objs):
    find(objs, "ServiceAccount", "checkout")["automountServiceAccountToken"] = True


def drop_app_protocol(objs):
    del find(objs, "Service", "loyalty")["spec"]["ports"][0]["appProtocol"]


def inline_secret(objs):
    objs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "commerce-mongodb"},
                 "stringData": {"uri": "mongodb://u:p@db/"}})
    find(objs, "ConfigMap", "commerce-config")["data"]["MONGODB_URI"] = "mongodb://app:hunter2@db:27017/"


def renamed_flag(objs):
    container(objs, "checkout")["args"] = ["serve", "--service", "checkout"]
    find(objs, "ConfigMap", "checkout-config")["data"]["COMMERCE_LOYALTY_ENDPOINT"] = "dns:///loyalty:8080"
    job = find(objs, "CronJob", "loyalty-reconcile")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    job["containers"][0]["args"] = ["loyalty", "reconcile", "--tenants", "demo"]


def short_grace(objs):
    find(objs, "Deployment", "checkout")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 20


def no_zone_spread(objs):
    spec = find(objs, "Deployment", "loyalty")["spec"]["template"]["spec"]
    spec["topologySpreadConstraints"] = [
        t for t in spec["topologySpreadConstraints"] if t["topologyKey"] != "topology.kubernetes.io/zone"
    ]


def wrong_scrape_port(objs):
    find(objs, "Deployment", "psp")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "8090"


def open_policy(objs):
    objs.remove(find(objs, "NetworkPolicy", "default-deny"))
    find(objs, "NetworkPolicy", "loyalty")["spec"]["ingress"][0]["from"] = []


BROKEN = {
    # rule: (overlay to break, how, a fragment each violation report must contain)
    "probes": ("prod", drop_readiness, "no gRPC readinessProbe"),
    "probes_name_registered_services": ("prod", probe_unknown_service, "does not register"),
    "resources": ("prod", drop_memory_limit, "limits.memory"),
    "non_root": ("prod", run_as_root, "non-root"),
    "disruption_budgets": ("prod", drop_pdb, "no PodDisruptionBudget"),
    "autoscaling": ("prod", low_min_replicas, "minReplicas 1 < 3"),
    "service_accounts": ("prod", automount_token, "mounts a token"),
    "app_protocols": ("prod", drop_app_protocol, "no appProtocol"),
    "secrets": ("prod", inline_secret, "Secret"),
    "flags": ("prod", renamed_flag, "--service"),
    "shutdown": ("prod", short_grace, "terminationGracePeriodSeconds 20"),
    "spread": ("prod", no_zone_spread, "topology.kubernetes.io/zone"),
    "scraped": ("staging", wrong_scrape_port, "Deployment/psp"),
    "network_policies": ("prod", open_policy, "default-deny"),
}


class PolicyFailsOnBadObjects(unittest.TestCase):
    """Each rule reports a broken copy of an overlay (so a passing rule means something)."""

    def test_every_rule_has_a_negative_test(self):
        self.assertEqual(set(BROKEN), set(policy.RULES))

    def test_probe_of_another_module_is_refused(self):
        objs = objects("prod")
        probe_other_module(objs)
        found = policy.check("probes_name_registered_services", "prod", objs, BINARY)
        self.assertTrue(any("not a checkout service" in v for v in found), found)


def _fails(rule):
    def test(self):
        overlay, breaks, fragment = BROKEN[rule]
        objs = objects(overlay)
        self.assertEqual(policy.check(rule, overlay, copy.deepcopy(objs), BINARY), [])
        breaks(objs)
        found = policy.check(rule, overlay, objs, BINARY)
        self.assertTrue(found, f"{rule} did not notice {breaks.__name__}")
        self.assertTrue(any(fragment in v for v in found), found)
    test.__doc__ = f"{rule} fails after {BROKEN[rule][1].__name__}"
    return test


for _rule in BROKEN:
    setattr(PolicyFailsOnBadObjects, f"test_{_rule}_fails", _fails(_rule))


# --- the image recipe ----------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    lines, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        current += " " + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def recipe_problems(text: str, binary: manifests.Binary) -> list[str]:
    """What in a Dockerfile does not match the workspace and the binary."""
    out = []
    steps = instructions(text)
    runs = [args for word, args in steps if word == "RUN"]
    cook = next((r for r in runs if "cargo chef cook" in r), "")
    build = next((r for r in runs if re.search(r"cargo build\b", r)), "")
    if not cook:
        out.append("no dependency layer (cargo chef cook) before the sources are copied")
    if not build:
        out.append("no cargo build")
        return out

    def selection(command):
        package = re.search(r"(?:-p|--package)[ =](\S+)", command)
        binary_name = re.search(r"--bin[ =](\S+)", command)
        return (package and package.group(1), binary_name and binary_name.group(1),
                "--release" in command, "--locked" in command)

    package, bin_name, release, locked = selection(build)
    if selection(cook) != (package, bin_name, release, locked):
        out.append("the dependency layer (cook) and the build select different packages or profiles")
    if not (release and locked):
        out.append("the build is not --release --locked")
    metadata = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
        cwd=ROOT, check=True, capture_output=True, text=True).stdout)
    packages = {p["name"]: p for p in metadata["packages"]}
    if package not in packages:
        out.append(f"package {package} is not in the workspace")
    else:
        bins = {t["name"] for t in packages[package]["targets"] if "bin" in t["kind"]}
        if bin_name not in bins:
            out.append(f"package {package} has no binary {bin_name} (it has {sorted(bins)})")
    if f"target/release/{bin_name}" not in build and not any(
            f"target/release/{bin_name}" in a for w, a in steps if w == "COPY"):
        out.append(f"the image does not take target/release/{bin_name}")
    if f"/usr/local/bin/{bin_name}" not in text:
        out.append(f"{bin_name} is not installed on the runtime PATH (/usr/local/bin)")

    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    base = next(a for w, a in final if w == "FROM")
    if not re.search(r"distroless/cc|debian:[\w.-]*slim", base):
        out.append(f"runtime base {base} is neither distroless cc nor Debian slim")
    entry = next((json.loads(a) for w, a in final if w == "ENTRYPOINT"), None)
    if entry != [bin_name]:
        out.append(f"ENTRYPOINT {entry} is not [\"{bin_name}\"] (exec form)")
    cmd = next((json.loads(a) for w, a in final if w == "CMD"), [])
    if cmd and cmd[0] not in binary.subcommands():
        out.append(f"CMD {cmd}: `{cmd[0]}` is no subcommand of {bin_name}")
    user = next((a for w, a in final if w == "USER"), "")
    if not re.fullmatch(r"[1-9]\d*(:\d+)?", user):
        out.append(f"USER {user!r} is not a numeric non-root user")
    accepted = binary.env_names("serve") | binary.env_names("psp", "serve")
    for word, args in final:
        if word == "ENV":
            for name in re.findall(r"([A-Z][A-Z0-9_]*)=", args):
                if name not in accepted:
                    out.append(f"ENV {name} is read by no `serve` or `psp serve` flag")
    exposed = {int(p.split("/")[0]) for w, a in final if w == "EXPOSE" for p in a.split()}
    listens = {int(m) for m in re.findall(r"_LISTEN=[\d.]+:(\d+)", text)}
    if exposed != listens:
        out.append(f"EXPOSE {sorted(exposed)} is not the listen ports {sorted(listens)}")
    labels = " ".join(a for w, a in final if w == "LABEL")
    for label in ("title", "source", "licenses", "version", "revision"):
        if f"org.opencontainers.image.{label}=" not in labels:
            out.append(f"no OCI label org.opencontainers.image.{label}")
    rust = re.search(r"ARG RUST_VERSION=(\d+)\.(\d+)", text)
    needed = re.search(r'rust-version = "(\d+)\.(\d+)', (ROOT / "Cargo.toml").read_text())
    if not rust or (int(rust[1]), int(rust[2])) < (int(needed[1]), int(needed[2])):
        out.append("the toolchain is older than the workspace's rust-version")
    return out


class ImageRecipe(unittest.TestCase):
    def setUp(self):
        self.text = (ROOT / "Dockerfile").read_text()

    def test_recipe_builds_and_runs_the_real_binary(self):
        self.assertEqual(recipe_problems(self.text, BINARY), [])

    def test_recipe_ports_and_user_are_the_manifests(self):
        exposed = {int(p) for line in self.text.splitlines() if line.startswith("EXPOSE")
                   for p in line.split()[1:]}
        for overlay in OVERLAYS:
            for w in policy.workloads(render(overlay)):
                spec = w["spec"]["template"]["spec"]
                for c in spec["containers"]:
                    if policy.is_commerce(c):
                        ports = {p["containerPort"] for p in c.get("ports", [])}
                        self.assertLessEqual(ports, exposed, f"{overlay} {name_of(w)}")
                        self.assertEqual(spec["securityContext"]["runAsUser"], 65532)
        self.assertIn("USER 65532:65532", self.text)

    def test_dockerignore_keeps_what_the_build_needs(self):
        ignored = {line.strip().strip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                   if line.strip() and not line.startswith("#")}
        self.assertIn("target", ignored)
        packages = json.loads(subprocess.run(
            ["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout)["packages"]
        members = {Path(p["manifest_path"]).relative_to(ROOT).parts[0] for p in packages}
        needed = {"Cargo.toml", "Cargo.lock", ".cargo", "tools", "proto"} | members
        self.assertEqual(needed & ignored, set())

    def test_recipe_check_fails_on_a_wrong_recipe(self):
        wrong = {
            "package": self.text.replace("-p commerce --bin commerce \\", "-p commerce-server --bin commerce \\"),
            "entrypoint": self.text.replace('ENTRYPOINT ["commerce"]', 'ENTRYPOINT ["/bin/sh", "-c", "commerce"]'),
            "subcommand": self.text.replace('CMD ["serve"]', 'CMD ["server"]'),
            "env": self.text.replace("COMMERCE_ADMIN_LISTEN=", "COMMERCE_ADMIN_ADDR="),
            "user": self.text.replace("USER 65532:65532", "USER nonroot"),
        }
        for what, text in wrong.items():
            with self.subTest(what=what):
                self.assertNotEqual(text, self.text)
                self.assertTrue(recipe_problems(text, BINARY), what)


if __name__ == "__main__":
    unittest.main()
