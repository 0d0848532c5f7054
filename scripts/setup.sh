#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently: Debian packages and the libtorch virtualenv.
# Safe to run again; it does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-compose: `docker-compose config` for scripts/validate-compose.sh (no engine is needed).
# chromium and chromium-driver: the dashboard's browser test (headless, over WebDriver).
# Go, protoc and Debian's Go gRPC packages: scripts/check-go-example.sh builds docs/clients.md's
# Go example against stubs generated from proto/.
DEBIAN_PACKAGES=(dataset-fashion-mnist postgresql docker-compose chromium chromium-driver
    golang-go protobuf-compiler protoc-gen-go-grpc golang-google-grpc-dev
    golang-google-genproto-dev golang-google-protobuf-dev)
VENV=.venv
STAMP="$VENV/.lethe-requirements"

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup: creating the virtualenv $VENV"
    python3 -m venv "$VENV"
fi
# A clean clone's `make test` took about 10 GB at its peak: the virtualenv (5.2 GB, torch and
# its CUDA libraries), pip's scratch while installing, and the build (2 GB without incremental
# caches, as .ci/run builds). A full disk otherwise surfaces as an OSError deep inside pip.
NEEDED_GB=12
warn_if_disk_is_short() {
    local free_gb
    free_gb=$(df -P --block-size=1G "$VENV" | awk 'NR == 2 { print $4 }')
    if ((free_gb < NEEDED_GB)); then
        echo "setup: warning: only ${free_gb} GB free on the disk holding $VENV; installing and building need about ${NEEDED_GB} GB" >&2
    fi
}

if ! cmp -s scripts/requirements.txt "$STAMP"; then
    warn_if_disk_is_short
    echo "setup: installing $(grep -v '^#' scripts/requirements.txt | tr '\n' ' ')into $VENV (torch is large: minutes on a fresh machine)"
    # No download cache: it would keep a second copy of every wheel (3.5 GB) after the install.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir -r scripts/requirements.txt
    cp scripts/requirements.txt "$STAMP"
fi

# lethe_client (clients/python), whose gRPC stubs are generated from proto/ when it is built:
# installed again whenever its sources or the protos change.
CLIENT_STAMP="$VENV/.lethe-client"
client_sources=$(cat clients/python/pyproject.toml clients/python/setup.py \
    clients/python/src/lethe_client/*.py proto/lethe/v1/*.proto | sha256sum | cut -d' ' -f1)
if [[ "$(cat "$CLIENT_STAMP" 2>/dev/null)" != "$client_sources" ]]; then
    echo "setup: installing lethe_client (clients/python) into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
        --no-build-isolation --no-deps ./clients/python
    echo "$client_sources" > "$CLIENT_STAMP"
fi
