"""Rendering, schema validation and the real binary, for the checks in test_k8s.py.

- render(): `kubectl kustomize` of an overlay, as a list of objects.
- validate(): every object against the Kubernetes 1.33 schemas in strict mode (kubernetes-validate,
  which bundles them), or against a custom resource schema committed under k8s/schemas/. An object
  with neither is an error, never a warning.
- Binary: what `commerce` really accepts (its --help) and registers (grpc.health.v1, asked of
  a running all-in-one and a running PSP process).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate.utils as kv
from kubernetes_validate.version import __version__ as KV_VERSION
import referencing
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ["dev", "staging", "prod", "canary"]
KUBERNETES_VERSION = "1.33.0"

# Custom resources: (apiVersion, kind) -> the schema file under k8s/schemas/ (see its refresh).
CUSTOM_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute-gateway-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}


@functools.lru_cache(maxsize=None)
def render(overlay: str) -> tuple:
    """The overlay's objects (a tuple of dicts; copy before changing one)."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def objects(overlay: str) -> list:
    return copy.deepcopy(list(render(overlay)))


def name_of(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


# --- schemas ----------------------------------------------------------------------------------


def _schema_dir() -> str:
    return f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"


@functools.lru_cache(maxsize=None)
def _definitions() -> dict:
    return kv.schema_contents(f"{_schema_dir()}/_definitions.json", KUBERNETES_VERSION)


def _strict(schema):
    """kubernetes-validate --strict for a CRD schema: objects with declared properties accept no
    others (as the API server's pruning would silently drop them)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        if schema.get("x-kubernetes-int-or-string"):
            schema.pop("type", None)
            schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        if schema.get("nullable") and isinstance(schema.get("type"), str):
            schema["type"] = [schema["type"], "null"]
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _custom_validator(filename: str):
    schema = _strict(json.loads((K8S / "schemas" / filename).read_text()))
    registry = referencing.Registry().with_resources(
        [
            ("https://kubernetes.io/api/_definitions.json",
             referencing.Resource.from_contents(_definitions())),
            (schema["$id"], referencing.Resource.from_contents(schema)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: dict) -> str | None:
    """None when `obj` is valid; otherwise why not."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_SCHEMAS:
        errors = sorted(
            _custom_validator(CUSTOM_SCHEMAS[key]).iter_errors(obj), key=lambda e: list(e.path)
        )
        if errors:
            error = errors[0]
            return f"{'.'.join(map(str, error.path))}: {error.message}"
        return None
    try:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    except kv.ValidationError as error:
        return f"{'.'.join(map(str, error.path))}: {error.message}"
    except kv.SchemaNotFoundError as error:
        return f"no schema: {error.message} (add one under k8s/schemas/)"
    return None


# kubernetes-validate reads _definitions.json (1.4 MB) for every object; read it once.
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)


# --- the binary ---------------------------------------------------------------------------------


class Binary:
    """`commerce` as built by the workspace (target/debug/commerce unless COMMERCE_BIN says)."""

    def __init__(self, path: Path):
        self.path = path
        self._processes: list[subprocess.Popen] = []
        self._channels: dict[str, grpc.Channel] = {}
        self._addresses: dict[str, str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="k8s-check-")

    @functools.lru_cache(maxsize=None)
    def help(self, *subcommand: str) -> str:
        return subprocess.run(
            [str(self.path), *subcommand, "--help"], check=True, capture_output=True, text=True
        ).stdout

    def subcommands(self, *parent: str) -> set[str]:
        text = self.help(*parent)
        block = text.split("Commands:", 1)[1].split("Options:", 1)[0]
        return {m.group(1) for m in re.finditer(r"^  ([a-z][a-z0-9-]*)\s", block, re.M)}

    def flags(self, *subcommand: str) -> set[str]:
        return set(re.findall(r"^\s+(?:-\w, )?(--[a-z0-9-]+)", self.help(*subcommand), re.M))

    def env_names(self, *subcommand: str) -> set[str]:
        return set(re.findall(r"\[env: ([A-Z0-9_]+)=", self.help(*subcommand)))

    def default(self, subcommand: tuple, flag: str) -> str | None:
        """The `[default: …]` of `flag` in the subcommand's help."""
        text = self.help(*subcommand)
        match = re.search(re.escape(flag) + r" <[^>]+>\n(.*?)(?=\n\s+-|\Z)", text, re.S)
        if not match:
            return None
        default = re.search(r"\[default: ([^\]]+)\]", match.group(1))
        return default.group(1) if default else None

    # Health: start the all-in-one and the PSP process once, ask them by name.

    def _start(self, role: str, args: list[str]) -> str:
        if role in self._addresses:
            return self._addresses[role]
        data = Path(self._tmp.name) / role
        process = subprocess.Popen(
            [str(self.path), *args, "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
             "--data-dir", str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env={key: value for key, value in os.environ.items()
                 if not key.startswith(("COMMERCE_", "MONGODB_"))},
        )
        self._processes.append(process)
        deadline = time.monotonic() + 60
        for line in process.stdout:
            match = re.search(r"listening on http://(\S+)", line)
            if match:
                self._addresses[role] = match.group(1)
                return match.group(1)
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"`commerce {' '.join(args)}` did not start")

    def health(self, role: str, service: str) -> str:
        """SERVING / NOT_SERVING / UNKNOWN, or NOT_FOUND when the process registers no such
        service. role: "serve" (the all-in-one: every module) or "psp" (`psp serve`)."""
        args = ["serve"] if role == "serve" else ["psp", "serve"]
        address = self._start(role, args)
        channel = self._channels.setdefault(role, grpc.insecure_channel(address))
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        name = service.encode()
        request = b"\x0a" + _varint(len(name)) + name if name else b""
        for _ in range(50):
            try:
                response = check(request, timeout=5)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return "NOT_FOUND"
                if error.code() == grpc.StatusCode.UNAVAILABLE:
                    time.sleep(0.1)
                    continue
                raise
            status = response[1] if len(response) >= 2 and response[0] == 0x08 else 0
            return {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING"}.get(status, str(status))
        raise RuntimeError(f"health of {role} did not answer")

    def close(self):
        for channel in self._channels.values():
            channel.close()
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._tmp.cleanup()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)



def main() -> int:
    """Per overlay: the objects it renders and the validation result (printed by scripts/k8s-check)."""
    failed = 0
    print(f"kubernetes-validate {KV_VERSION}, Kubernetes {KUBERNETES_VERSION} strict; CRD schemas: "
          + ", ".join(f"{kind} ({file})" for (_, kind), file in CUSTOM_SCHEMAS.items()))
    for overlay in OVERLAYS:
        objs = render(overlay)
        errors = [(name_of(o), e) for o in objs if (e := validate(o))]
        custom = sum((o["apiVersion"], o["kind"]) in CUSTOM_SCHEMAS for o in objs)
        print(f"\n{overlay}: {len(objs)} objects, {len(objs) - len(errors)} valid "
              f"({len(objs) - custom} against Kubernetes {KUBERNETES_VERSION} strict, {custom} against CRD schemas)")
        kinds: dict[str, list[str]] = {}
        for o in objs:
            kinds.setdefault(o["kind"], []).append(o["metadata"]["name"])
        for kind, names in kinds.items():
            print(f"  {kind}: {', '.join(names)}")
        for name, error in errors:
            print(f"  INVALID {name}: {error}")
        failed += len(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
