#!/usr/bin/env bash
# Installs what a fresh machine lacks, idempotently: Debian packages and the libtorch virtualenv.
# Safe to run again; it does nothing when everything is in place.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-compose: `docker-compose config` for scripts/validate-compose.sh (no engine is needed).
# chromium and chromium-driver: the dashboard's browser test (headless, over WebDriver).
DEBIAN_PACKAGES=(dataset-fashion-mnist postgresql docker-compose chromium chromium-driver)
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
if ! cmp -s scripts/requirements.txt "$STAMP"; then
    echo "setup: installing $(grep -v '^#' scripts/requirements.txt | tr '\n' ' ')into $VENV (torch is large: minutes on a fresh machine)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r scripts/requirements.txt
    cp scripts/requirements.txt "$STAMP"
fi
