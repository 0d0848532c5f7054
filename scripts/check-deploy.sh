#!/usr/bin/env bash
# The deployment files must only set what the binaries read: every LETHE_* variable in
# docker-compose.yml must be one that `lethe-coordinator --help` or `lethe-worker serve --help`
# lists. Run after a build (make test runs it after the tests, which build both binaries).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${LETHE_BIN_DIR:-target/debug}
for binary in lethe-coordinator lethe-worker; do
    if [[ ! -x "$bin/$binary" ]]; then
        echo "check-deploy: $bin/$binary is not built" >&2
        exit 1
    fi
done
known=$( { "$bin/lethe-coordinator" --help; "$bin/lethe-worker" serve --help; } \
    | grep -o 'env: LETHE_[A-Z_]*' | sed 's/env: //' | sort -u)
status=0
for key in $(grep -o 'LETHE_[A-Z_]*' docker-compose.yml | sort -u); do
    if ! grep -qx "$key" <<<"$known"; then
        echo "check-deploy: docker-compose.yml sets $key, which no binary reads" >&2
        status=1
    fi
done
[[ $status -eq 0 ]] && echo "check-deploy: every LETHE_* variable in docker-compose.yml is read by a binary"
exit $status
