"""Offline validators for rendered manifests, built once and reused (tests and the bench).

- :class:`StackSchema`: the operator's Stack CRD (``fixtures/pulumi.com_stacks.yaml``), its
  ``openAPIV3Schema`` closed with ``additionalProperties: false`` wherever the API server
  would prune unknown fields instead, so that a typo'd field fails here rather than
  vanish in a cluster; plus the CRD's one CEL rule, and ``metadata`` checked as the API
  server checks every object's (Kubernetes' ObjectMeta schema, DNS names, labels).
- :class:`BuiltinSchemas`: Kubernetes' own strict schemas as ``kubernetes-validate`` ships
  them (the newest version it has), one compiled validator per kind.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kv
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

CRD = Path(__file__).parent / "fixtures" / "pulumi.com_stacks.yaml"
#: Kubernetes' version whose schemas validate built-in objects: the newest bundled.
K8S_VERSION = kv.latest_version()

_DNS_SUBDOMAIN = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
)
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")

_OBJECT_META = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
#: The CRD's CEL rules this checker can evaluate; an unknown rule fails loudly.
_RULES: Mapping[str, Callable[[Mapping[str, Any]], bool]] = {
    "size(self.metadata.name) <= 42": lambda obj: len(obj["metadata"]["name"]) <= 42,
}


def closed(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its
    properties and neither allows more nor preserves unknown fields."""
    if isinstance(schema, dict):
        for value in schema.values():
            closed(value)
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for item in schema:
            closed(item)
    return schema


def metadata_errors(metadata: Mapping[str, Any], name_rule: re.Pattern[str]) -> list[str]:
    """What the API server refuses in any object's name and labels."""
    errors = []
    name = metadata.get("name", "")
    if not name_rule.fullmatch(name):
        errors.append(f"metadata.name {name!r} is not a valid name")
    if not _DNS_LABEL.fullmatch(metadata.get("namespace", "")):
        errors.append("metadata.namespace is not a DNS label")
    for key, value in (metadata.get("labels") or {}).items():
        prefix, _, label = key.rpartition("/")
        if (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)) or not _LABEL_NAME.fullmatch(label):
            errors.append(f"label key {key!r} is invalid")
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            errors.append(f"label {key!r} value {value!r} is invalid")
    return errors


class BuiltinSchemas:
    """Kubernetes' strict JSON schemas (unknown fields refused), compiled once per kind."""

    def __init__(self, version: str = K8S_VERSION) -> None:
        self.version = version
        self._dir = f"kubernetes-json-schema/v{version}-local-strict"
        definitions = kv.schema_contents(f"{self._dir}/_definitions.json", version)
        self._registry: Registry = Resource.from_contents(definitions) @ Registry()
        self._validators: dict[tuple[str, str], jsonschema.Validator] = {}

    def validator(self, kind: str, api_version: str) -> jsonschema.Validator:
        key = (kind, api_version)
        if key not in self._validators:
            group = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
            schema = kv.schema_contents(f"{self._dir}/{kind.lower()}-{group}.json", self.version)
            registry = Resource.from_contents(schema) @ self._registry
            self._validators[key] = jsonschema.Draft202012Validator(schema, registry=registry)
        return self._validators[key]

    def object_meta(self) -> jsonschema.Validator:
        """ObjectMeta alone, for a custom resource's ``metadata``."""
        key = ("ObjectMeta", "meta/v1")
        if key not in self._validators:
            schema = {"$id": "https://kubernetes.io/api/objectmeta", "$ref": _OBJECT_META}
            resource = Resource.from_contents(schema, default_specification=DRAFT202012)
            self._validators[key] = jsonschema.Draft202012Validator(
                schema, registry=resource @ self._registry
            )
        return self._validators[key]

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        found = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in self.validator(obj["kind"], obj["apiVersion"]).iter_errors(obj)
        ]
        return found + metadata_errors(obj.get("metadata", {}), _DNS_SUBDOMAIN)


class StackSchema:
    """The operator's Stack CRD, closed against unknown fields."""

    def __init__(self, builtin: BuiltinSchemas | None = None) -> None:
        crd = yaml.safe_load(CRD.read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        self.schema = closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
        self.rules = [rule["rule"] for rule in self.schema.get("x-kubernetes-validations", [])]
        unknown = [rule for rule in self.rules if rule not in _RULES]
        assert not unknown, f"the CRD has a rule this checker cannot evaluate: {unknown}"
        self.group = crd["spec"]["group"]
        self.kind = crd["spec"]["names"]["kind"]
        self._validator = jsonschema.Draft7Validator(self.schema)
        self._builtin = builtin or BuiltinSchemas()

    def errors(self, obj: Mapping[str, Any]) -> list[str]:
        found = [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in self._validator.iter_errors(obj)
        ]
        if obj.get("apiVersion") != f"{self.group}/v1" or obj.get("kind") != self.kind:
            found.append(f"not a {self.group}/v1 {self.kind}")
        metadata = obj.get("metadata")
        if not isinstance(metadata, dict):
            return [*found, "metadata missing"]
        found += [
            f"metadata.{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self._builtin.object_meta().iter_errors(metadata)
        ]
        found += [f"CRD rule {rule!r} fails" for rule in self.rules if not _RULES[rule](obj)]
        # The operator names pods and Updates after it: a DNS label, not just a subdomain.
        return found + metadata_errors(metadata, _DNS_LABEL)


@cache
def validators() -> tuple[StackSchema, BuiltinSchemas]:
    builtin = BuiltinSchemas()
    return StackSchema(builtin), builtin


def manifest_errors(objects: list[Mapping[str, Any]]) -> list[str]:
    """Every problem of a rendered file's objects, each prefixed by its kind and name."""
    stack_schema, builtin = validators()
    found = []
    for obj in objects:
        check = stack_schema.errors if obj.get("kind") == "Stack" else builtin.errors
        where = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
        found += [f"{where}: {problem}" for problem in check(obj)]
    return found
