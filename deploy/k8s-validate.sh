#!/usr/bin/env bash
# Checks the Kubernetes manifests of deploy/k8s offline, with no cluster (ctest runs it
# as deploy.k8s_validate):
#  1. every object against the Kubernetes API schemas bundled in kubernetes-validate
#     (pinned in deploy/requirements.txt), strictly: an unknown or misspelt field, a
#     value of the wrong type, or a kind the schemas do not know fails;
#  2. what a schema cannot see: the names the objects use for each other (selectors,
#     ports, volumes, the ConfigMap and the Secret and their keys), the scrape port,
#     kustomization.yaml's list, and every flag of the flags file against the server's.
# Usage: deploy/k8s-validate.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The oldest Kubernetes release the manifests are meant for, and the newest the pinned
# package knows.
KUBERNETES_VERSIONS=(1.30 1.37)

k8s_dir="$APESERVE_ROOT/deploy/k8s"
validator="$APESERVE_VENV/bin/kubernetes-validate"
[ -x "$validator" ] || die "$validator is missing: run deploy/setup.sh"
cd "$k8s_dir"

# kustomization.yaml is kubectl's list of files, not an API object: the schemas have
# nothing for it (the second step checks it).
manifests=()
for file in *.yaml; do
  [ "$file" = kustomization.yaml ] || manifests+=("$file")
done
[ "${#manifests[@]}" -gt 0 ] || die "no manifests in $k8s_dir"

args=(--strict)
for version in "${KUBERNETES_VERSIONS[@]}"; do args+=(--kubernetes-version "$version"); done
log "kubernetes-validate $("$validator" --version): ${manifests[*]} against Kubernetes ${KUBERNETES_VERSIONS[*]}"
status=0
report="$("$validator" "${args[@]}" "${manifests[@]}" 2>&1)" || status=$?
printf '%s\n' "$report"
# A kind without a schema (a misspelt kind, too) is only a warning with exit status 0,
# and an empty file validates nothing: both fail here.
[ "$status" -eq 0 ] || die "kubernetes-validate failed (exit status $status)"
! grep -v '^INFO ' <<<"$report" >/dev/null || die "kubernetes-validate did not pass everything"
for file in "${manifests[@]}"; do
  grep -q "^INFO $file passed" <<<"$report" || die "$file holds no Kubernetes object"
done

log "cross-references and flags"
"$APESERVE_VENV/bin/python" - "$APESERVE_ROOT/server/apeserve_main.cc" <<'PYTHON'
import glob
import re
import sys

import yaml

errors = []


def check(ok, message):
    if not ok:
        errors.append(message)


objects, files_of = [], {}
for path in sorted(glob.glob("*.yaml")):
    if path == "kustomization.yaml":
        continue
    for doc in yaml.safe_load_all(open(path)):
        if doc:
            objects.append(doc)
            files_of.setdefault(path, []).append(doc["kind"])


def named(kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


services, config_maps, secrets = named("Service"), named("ConfigMap"), named("Secret")

# The server's flags, and absl's own that a flags file may use.
server_flags = set(re.findall(r"ABSL_FLAG\(\s*[^,]+,\s*(\w+)\s*,", open(sys.argv[1]).read()))
server_flags |= {"flagfile", "fromenv", "tryfromenv", "undefok"}
check(len(server_flags) > 10, f"found no ABSL_FLAG in {sys.argv[1]}")

pods = []  # (labels, {port name: number})
for name, sts in named("StatefulSet").items():
    where = f"statefulset/{name}"
    template = sts["spec"]["template"]
    labels = template["metadata"].get("labels", {})
    pod = template["spec"]
    for key, value in sts["spec"]["selector"]["matchLabels"].items():
        check(labels.get(key) == value, f"{where}: selector {key}={value} misses the pod's labels")
    governing = services.get(sts["spec"]["serviceName"])
    check(governing is not None and governing["spec"].get("clusterIP") == "None",
          f"{where}: serviceName {sts['spec']['serviceName']} is no headless Service here")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    for volume in volumes.values():
        if "configMap" in volume:
            check(volume["configMap"]["name"] in config_maps,
                  f"{where}: no ConfigMap {volume['configMap']['name']}")
        if "secret" in volume:
            check(volume["secret"]["secretName"] in secrets,
                  f"{where}: no Secret {volume['secret']['secretName']}")

    ports = {}
    for container in pod["containers"]:
        ports.update({p["name"]: p["containerPort"] for p in container.get("ports", [])})
        # Every string the container passes on: its arguments, its probes' commands, and
        # the flags files it reads (a ConfigMap key mounted as a file).
        words = list(container.get("command", [])) + list(container.get("args", []))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            words += container.get(probe, {}).get("exec", {}).get("command", [])
        secret_dirs = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"])
            check(volume is not None or mount["name"] in claims,
                  f"{where}: volumeMount {mount['name']} names no volume")
            if volume and "secret" in volume and volume["secret"]["secretName"] in secrets:
                secret_dirs[mount["mountPath"]] = secrets[volume["secret"]["secretName"]]
            if volume and "configMap" in volume and "subPath" in mount:
                data = config_maps.get(volume["configMap"]["name"], {}).get("data", {})
                check(mount["subPath"] in data, f"{where}: ConfigMap has no key {mount['subPath']}")
                if f"--flagfile={mount['mountPath']}" in words and mount["subPath"] in data:
                    for line in data[mount["subPath"]].splitlines():
                        line = line.strip()
                        if not line or line.startswith("#"):
                            continue
                        flag = re.fullmatch(r"--(\w+)(=.*)?", line)
                        check(flag is not None and flag.group(1) in server_flags,
                              f"{where}: the flags file's line '{line}' is no apeserve flag")
                        words.append(line)
        # A file of a mounted Secret must be one of its keys.
        for word in words:
            for mount_path, secret in secret_dirs.items():
                for key in re.findall(re.escape(mount_path) + r"/([\w.-]+)", word):
                    keys = set(secret.get("data", {})) | set(secret.get("stringData", {}))
                    check(key in keys, f"{where}: '{word}' names {key}, no key of the Secret")
        metrics = [w for w in words if w.startswith("--metrics_listen=")]
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            port = annotations.get("prometheus.io/port")
            check(port is not None and port.isdigit() and int(port) in ports.values(),
                  f"{where}: prometheus.io/port {port} is no container port")
            check(bool(metrics) and metrics[-1].endswith(f":{port}")
                  and not metrics[-1].startswith(("--metrics_listen=127.", "--metrics_listen=localhost")),
                  f"{where}: scraped on port {port}, but the server's metrics listen on "
                  f"{metrics[-1] if metrics else 'the loopback default'}")
    pods.append((labels, ports))

for name, service in services.items():
    selector = service["spec"].get("selector", {})
    matching = [ports for labels, ports in pods
                if all(labels.get(k) == v for k, v in selector.items())]
    check(bool(matching), f"service/{name}: selector {selector} selects no pod here")
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        for ports in matching:
            check(target in ports or target in ports.values(),
                  f"service/{name}: targetPort {target} is no container port")

# kubectl apply -k: the files it lists exist, and it lists all but the Secret's.
kustomization = yaml.safe_load(open("kustomization.yaml"))
listed = kustomization.get("resources", [])
for path in listed:
    check(path in files_of, f"kustomization.yaml: {path} is not in deploy/k8s")
for path, kinds in files_of.items():
    if set(kinds) != {"Secret"}:
        check(path in listed, f"kustomization.yaml does not list {path}")

for message in dict.fromkeys(errors):
    print(f"ERROR {message}")
print(f"{len(objects)} objects checked, {len(errors)} problems")
sys.exit(1 if errors else 0)
PYTHON
log "deploy/k8s: valid"
