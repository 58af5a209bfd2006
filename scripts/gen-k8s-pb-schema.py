#!/usr/bin/env python3
"""Generates crates/apiserver/src/pb/schema.txt, the protobuf field table the API server's
protobuf transcoder (crates/apiserver/src/pb/) walks.

Field numbers and wire types come from the k8s-pb crate (prost code generated from the
Kubernetes generated.proto files); the JSON field names come from k8s-openapi (serde code
generated from the OpenAPI spec), matched per message by the field name with case and
underscores ignored (prost turns `podIPs` into `pod_i_ps`, k8s-openapi into `pod_ips`).
Only messages reachable from the kinds in ROOTS are written.

Usage: scripts/gen-k8s-pb-schema.py [CARGO_REGISTRY_SRC_DIR] > crates/apiserver/src/pb/schema.txt
The crate versions are pinned below; bumping one means regenerating and re-running the
apiserver's pb tests (they cross-check the table against k8s-pb's own prost decoder).
"""

import glob
import os
import re
import sys

K8S_PB = "k8s-pb-0.9.0"
K8S_OPENAPI = "k8s-openapi-0.29.0"
OPENAPI_VERSIONS = ["v1_37", "v1_36", "v1_35", "v1_34", "v1_33"]

# (apiVersion, kind, message) for every kind the server serves in protobuf; lists are added.
ROOTS = [
    ("v1", "Pod", "api.core.v1.Pod"),
    ("v1", "Node", "api.core.v1.Node"),
    ("v1", "PersistentVolume", "api.core.v1.PersistentVolume"),
    ("v1", "PersistentVolumeClaim", "api.core.v1.PersistentVolumeClaim"),
    ("v1", "Event", "api.core.v1.Event"),
    ("v1", "Namespace", "api.core.v1.Namespace"),
    ("v1", "Secret", "api.core.v1.Secret"),
    ("v1", "ConfigMap", "api.core.v1.ConfigMap"),
    ("v1", "ServiceAccount", "api.core.v1.ServiceAccount"),
    ("v1", "ResourceQuota", "api.core.v1.ResourceQuota"),
    ("v1", "Service", "api.core.v1.Service"),
    ("v1", "Endpoints", "api.core.v1.Endpoints"),
    ("apps/v1", "StatefulSet", "api.apps.v1.StatefulSet"),
    ("apps/v1", "Deployment", "api.apps.v1.Deployment"),
    ("apps/v1", "DaemonSet", "api.apps.v1.DaemonSet"),
    ("coordination.k8s.io/v1", "Lease", "api.coordination.v1.Lease"),
    ("events.k8s.io/v1", "Event", "api.events.v1.Event"),
    ("storage.k8s.io/v1", "StorageClass", "api.storage.v1.StorageClass"),
    ("storage.k8s.io/v1", "CSIDriver", "api.storage.v1.CSIDriver"),
    ("storage.k8s.io/v1", "CSINode", "api.storage.v1.CSINode"),
    ("storage.k8s.io/v1", "VolumeAttachment", "api.storage.v1.VolumeAttachment"),
    ("storage.k8s.io/v1", "CSIStorageCapacity", "api.storage.v1.CSIStorageCapacity"),
    ("discovery.k8s.io/v1", "EndpointSlice", "api.discovery.v1.EndpointSlice"),
    ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration",
     "api.admissionregistration.v1.ValidatingWebhookConfiguration"),
    ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration",
     "api.admissionregistration.v1.MutatingWebhookConfiguration"),
]
# Kinds without a List, and the meta kinds every group shares.
SINGLE = [
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview",
     "api.authorization.v1.SelfSubjectAccessReview"),
    ("v1", "Status", "apimachinery.pkg.apis.meta.v1.Status"),
    ("v1", "DeleteOptions", "apimachinery.pkg.apis.meta.v1.DeleteOptions"),
    ("v1", "WatchEvent", "apimachinery.pkg.apis.meta.v1.WatchEvent"),
]
# Messages with a JSON form of their own: the transcoder handles them whole.
LEAVES = {
    "apimachinery.pkg.apis.meta.v1.Time": "time",
    "apimachinery.pkg.apis.meta.v1.MicroTime": "microtime",
    "apimachinery.pkg.apis.meta.v1.Duration": "duration",
    "apimachinery.pkg.apis.meta.v1.FieldsV1": "fieldsv1",
    "apimachinery.pkg.api.resource.Quantity": "quantity",
    "apimachinery.pkg.util.intstr.IntOrString": "intorstring",
    "apimachinery.pkg.runtime.RawExtension": "rawextension",
}

STRUCT = re.compile(r"^pub struct (\w+) \{$")
ATTR = re.compile(r"#\[prost\(([^)]*)\)\]")


def norm(name):
    return name.replace("r#", "").replace("_", "").lower()


def resolve(module, path):
    """Resolves a Rust type path used inside `module` (list of segments) to a message name."""
    segs = [s for s in path.split("::") if s]
    mod = list(module)
    while segs and segs[0] == "super":
        segs.pop(0)
        mod.pop()
    return ".".join(mod + segs)


def inner_type(ty, module):
    ty = re.sub(r"\s+", "", ty).replace(",>", ">")
    for wrap in ("::core::option::Option<", "::prost::alloc::vec::Vec<", "::prost::alloc::boxed::Box<"):
        while ty.startswith(wrap):
            ty = ty[len(wrap):-1]
    if ty.startswith("::prost::alloc::collections::BTreeMap<"):
        ty = ty[len("::prost::alloc::collections::BTreeMap<"):-1]
        ty = ty.split(",", 1)[1]
    return resolve(module, ty)


def parse_pb(root):
    messages = {}
    for path in glob.glob(os.path.join(root, "src", "**", "mod.rs"), recursive=True):
        rel = os.path.relpath(os.path.dirname(path), os.path.join(root, "src"))
        module = rel.split(os.sep)
        lines = open(path, encoding="utf-8").read().split("\n")
        i = 0
        current = None
        while i < len(lines):
            line = lines[i].strip()
            m = STRUCT.match(line)
            if m:
                current = ".".join(module + [m.group(1)])
                messages[current] = []
            elif line == "}":
                current = None
            elif current and line.startswith("#[prost("):
                attr = ATTR.match(line).group(1)
                decl = ""
                i += 1
                while True:
                    decl += lines[i].strip()
                    if decl.endswith(",") and decl.count("<") == decl.count(">"):
                        break
                    i += 1
                name, ty = decl[len("pub "):-1].split(":", 1)
                tag = int(re.search(r'tag = "(\d+)"', attr).group(1))
                repeated = ", repeated" in attr
                kind = attr.split(",")[0].strip()
                if kind.startswith("btree_map"):
                    value = re.search(r'"string, (\w+)"', attr).group(1)
                    if value == "message":
                        value = inner_type(ty, module)
                    kind = "map:" + value
                elif kind == "message":
                    kind = inner_type(ty, module)
                elif kind.startswith("bytes"):
                    kind = "bytes"
                messages[current].append((tag, name.strip(), kind, repeated))
            i += 1
    return messages


def parse_openapi(root):
    names = {}
    for version in reversed(OPENAPI_VERSIONS):
        for path in glob.glob(os.path.join(root, "src", version, "**", "*.rs"), recursive=True):
            text = open(path, encoding="utf-8").read()
            m = re.match(r"// Generated from definition io\.k8s\.([\w.]+)", text)
            if not m:
                continue
            fields = dict((norm(rust), json) for json, rust in
                          re.findall(r'"([^"]+)" => Field::Key_(\w+),', text))
            # k8s-pb renames some messages (HTTPGetAction -> HttpGetAction): match the
            # last segment case-insensitively.
            parts = m.group(1).split(".")
            names[".".join(parts[:-1] + [parts[-1].lower()])] = fields
    return names


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else glob.glob(
        os.path.expanduser("~/.cargo/registry/src/*/"))[0]
    messages = parse_pb(os.path.join(src, K8S_PB))
    json_names = parse_openapi(os.path.join(src, K8S_OPENAPI))
    roots = [(a, k, m) for a, k, m in ROOTS]
    roots += [(a, k + "List", m + "List") for a, k, m in ROOTS]
    roots += SINGLE
    seen, order, todo = set(), [], [m for _, _, m in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in LEAVES:
            continue
        if name not in messages:
            sys.exit(f"unknown message {name}")
        seen.add(name)
        order.append(name)
        for _, _, kind, _ in messages[name]:
            target = kind[4:] if kind.startswith("map:") else kind
            if "." in target:
                todo.append(target)
    print(f"# Generated by scripts/gen-k8s-pb-schema.py from {K8S_PB} (field numbers, wire")
    print(f"# types) and {K8S_OPENAPI} (JSON names). Do not edit; regenerate.")
    print("# kind API_VERSION KIND MESSAGE | leaf MESSAGE FORM | message NAME")
    print("# then one field a line: NUMBER JSON_NAME TYPE, TYPE prefixed [] when repeated;")
    print("# JSON_NAME - is a Go struct embedded inline: its fields are the parent's.")
    print("# map:VALUE is a map with string keys.")
    for api_version, kind, message in roots:
        print(f"kind {api_version} {kind} {message}")
    for name, form in sorted(LEAVES.items()):
        print(f"leaf {name} {form}")
    def names_of(name):
        return json_names.get(".".join(name.split(".")[:-1] + [name.split(".")[-1].lower()]))

    # Go structs embedded inline (`json:",inline"`, e.g. Volume's VolumeSource) are a
    # message field in protobuf but their fields sit in the parent's JSON object: such a
    # field is unknown to the parent's JSON names, while its message's fields are known.
    inline = set()
    borrowed = {}
    changed = True
    while changed:
        changed = False
        for name in order:
            known = names_of(name) or borrowed.get(name)
            if not known:
                continue
            for tag, rust, kind, repeated in messages[name]:
                if norm(rust) in known or "." not in kind or kind.startswith("map:") or kind in LEAVES:
                    continue
                if not all(norm(f[1]) in known for f in messages[kind]):
                    continue  # a field newer than k8s-openapi, not an embedding
                if (name, tag) not in inline:
                    inline.add((name, tag))
                    changed = True
                merged = dict(borrowed.get(kind, {}))
                merged.update(known)
                if merged != borrowed.get(kind):
                    borrowed[kind] = merged
                    changed = True
    unmatched = []
    for name in sorted(order):
        print(f"message {name}")
        known = names_of(name) or borrowed.get(name) or {}
        for tag, rust, kind, repeated in sorted(messages[name]):
            json = known.get(norm(rust))
            if (name, tag) in inline:
                json = "-"
            elif json is None:
                # Not in the OpenAPI spec (WatchEvent, the List kinds): lowerCamel of the
                # proto name, which is the json tag there.
                parts = rust.replace("r#", "").split("_")
                json = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
                unmatched.append(f"{name}.{json}")
            print(f"{tag} {json} {'[]' if repeated else ''}{kind}")
    print(f"# {len(order)} messages; JSON names not in k8s-openapi: {len(unmatched)}", file=sys.stderr)
    for u in unmatched:
        print(f"#   {u}", file=sys.stderr)


if __name__ == "__main__":
    main()
