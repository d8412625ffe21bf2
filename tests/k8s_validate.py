"""Validates `appliance k8s` output with tools independent of appliance (tests/integration/k8s.rs runs it).

usage: k8s_validate.py OBJECTS.yaml OBJECTS.json SCALEDOBJECT-CRD.yaml

- The YAML documents, read by PyYAML (YAML 1.1, the strictest about bare words), must equal the
  `--output json` List's items: the hand-written YAML emitter loses nothing.
- Built-in kinds are validated with kubernetes-validate (the OpenAPI schemas of the newest
  Kubernetes release it carries), strict: an unknown field fails, as `kubectl apply` would.
- A KEDA ScaledObject is validated against the openAPIV3Schema of KEDA's CRD, made strict the
  same way (the API server would silently prune an unknown field there instead).
- Controls: each object with one unknown field added must fail, so a validator that accepts
  everything cannot pass the test.

Prints one JSON line: {"kubernetes": VERSION, "validated": ["Kind/name", ...]}; exits 1 on failure.
"""

import copy
import json
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """The schema with every object that lists its properties closed to others."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validator(path, api_version):
    crd = yaml.safe_load(open(path))
    group = crd["spec"]["group"]
    for version in crd["spec"]["versions"]:
        if f"{group}/{version['name']}" == api_version:
            schema = strict(version["schema"]["openAPIV3Schema"])
            return jsonschema.Draft7Validator(schema)
    sys.exit(f"{path} has no schema for {api_version}")


def validate(doc, version, crd_path):
    if doc["kind"] == "ScaledObject":
        crd_validator(crd_path, doc["apiVersion"]).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


def main():
    yaml_path, json_path, crd_path = sys.argv[1:4]
    docs = [d for d in yaml.safe_load_all(open(yaml_path)) if d is not None]
    items = json.load(open(json_path))["items"]
    if docs != items:
        sys.exit(f"YAML and JSON differ:\n{json.dumps(docs, indent=1)}\n{json.dumps(items, indent=1)}")
    version = kubernetes_validate.latest_version()
    validated = []
    for doc in docs:
        validate(doc, version, crd_path)
        broken = copy.deepcopy(doc)
        broken["spec"]["notAField"] = True
        try:
            validate(broken, version, crd_path)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError):
            pass
        else:
            sys.exit(f"control: {doc['kind']} with an unknown field passed validation")
        validated.append(f"{doc['kind']}/{doc['metadata']['name']}")
    print(json.dumps({"kubernetes": version, "validated": validated}))


if __name__ == "__main__":
    main()
