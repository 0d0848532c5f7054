#!/usr/bin/env bash
# Schema-checks the Kubernetes manifests in deploy/k8s without a cluster: every resource in every
# *.yaml (the example Secret too) against the OpenAPI schemas of pinned Kubernetes versions, with
# unknown fields rejected, using kubernetes-validate (pinned in scripts/requirements.txt; installed
# into the virtualenv when missing). A kind the validator has no schema for (a CRD) fails. Also
# checks that kustomization.yaml lists every manifest but the *.example.yaml ones, and, where
# kubectl is installed, validates what `kubectl kustomize` renders. Fast and idempotent.
# Usage: scripts/validate-k8s.sh [DIR]   (default deploy/k8s)
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest version the manifests claim to support (native gRPC probes need 1.27) and the
# newest the pinned validator knows.
K8S_VERSIONS=(1.30.0 1.37.0)
DIR=${1:-deploy/k8s}

venv=${VIRTUAL_ENV:-$PWD/.venv}
pin=$(grep -E '^kubernetes-validate==' scripts/requirements.txt || true)
if [[ -z $pin ]]; then
    echo "validate-k8s: scripts/requirements.txt pins no kubernetes-validate==VERSION" >&2
    exit 1
fi
validator=$venv/bin/kubernetes-validate
if [[ ! -x $validator ]] || [[ $("$validator" --version) != "${pin#*==}" ]]; then
    echo "validate-k8s: installing $pin into $venv"
    [[ -x $venv/bin/pip ]] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pin"
fi

manifests=()
for file in "$DIR"/*.yaml; do
    [[ $(basename "$file") == kustomization.yaml ]] || manifests+=("$file")
done

status=0
# kustomization.yaml must name each manifest that exists, and every manifest but the examples.
"$venv/bin/python" - "$DIR" <<'PY' || status=1
import os, sys, yaml
directory = sys.argv[1]
with open(os.path.join(directory, "kustomization.yaml")) as f:
    listed = yaml.safe_load(f).get("resources", [])
present = sorted(n for n in os.listdir(directory)
                 if n.endswith(".yaml") and n != "kustomization.yaml" and not n.endswith(".example.yaml"))
bad = False
for name in listed:
    if not os.path.isfile(os.path.join(directory, name)):
        print(f"validate-k8s: {directory}/kustomization.yaml lists {name}, which does not exist", file=sys.stderr)
        bad = True
for name in present:
    if name not in listed:
        print(f"validate-k8s: {directory}/{name} is not in kustomization.yaml's resources "
              "(name it *.example.yaml if it must not be applied)", file=sys.stderr)
        bad = True
sys.exit(1 if bad else 0)
PY

validate() { # label, files...
    local label=$1 version output rc
    shift
    for version in "${K8S_VERSIONS[@]}"; do
        rc=0
        output=$("$validator" --strict -k "$version" "$@" 2>&1) || rc=$?
        if ((rc)) || grep -qv '^INFO' <<<"$output"; then
            grep -v '^INFO' <<<"$output" | sed 's/^/validate-k8s: /' >&2
            status=1
        else
            echo "validate-k8s: $label: $(grep -c ' passed for resource ' <<<"$output") resources valid against Kubernetes $version (strict)"
        fi
    done
}
validate "$DIR/*.yaml" "${manifests[@]}"

if command -v kubectl >/dev/null 2>&1; then
    rendered=$(mktemp --suffix=.yaml)
    trap 'rm -f "$rendered"' EXIT
    if kubectl kustomize "$DIR" >"$rendered"; then
        validate "kubectl kustomize $DIR" "$rendered"
    else
        echo "validate-k8s: kubectl kustomize $DIR failed" >&2
        status=1
    fi
else
    echo "validate-k8s: no kubectl here: the kustomization was not rendered (its resource list was checked)"
fi
((status == 0)) || echo "validate-k8s: FAILED (see above)" >&2
exit $status
