#!/usr/bin/env bash
# The deployment files must only set what the binaries read: every LETHE_* variable, flag and
# config-file key in docker-compose.yml, deploy/k8s and deploy/config must be one that the binary
# (and subcommand) getting it lists in its --help; workers must get longer than their drain grace
# before they are killed. It first shows on a scratch copy that it reports a few invented
# mistakes. The work is in scripts/check_deploy.py (its docstring says what is checked how).
# Run after a build (make test runs it after the tests, which build both binaries); the binaries
# are taken from LETHE_BIN_DIR (default target/debug).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${VIRTUAL_ENV:-$PWD/.venv}/bin/python
[[ -x $python ]] || python=python3
if ! "$python" -c 'import yaml' 2>/dev/null; then
    echo "check-deploy: $python has no PyYAML (make setup installs scripts/requirements.txt)" >&2
    exit 1
fi
bin=${LETHE_BIN_DIR:-target/debug}
"$python" scripts/check_deploy.py --bin-dir "$bin" "$@"

# Keys are not enough: each example file must load, values and all, in the binary it is for.
# The secrets they leave to the environment get placeholders here.
for program in coordinator worker; do
    file=deploy/config/$program.toml
    case $program in
        coordinator) command=("$bin/lethe-coordinator" dump-config --config "$file") ;;
        worker) command=("$bin/lethe-worker" dump-config --config "$file") ;;
    esac
    if ! env LETHE_DATABASE_URL=postgres://check@localhost/lethe LETHE_ARTIFACTS=file:///check \
        "${command[@]}" >/dev/null; then
        echo "check-deploy: $file does not load in lethe-$program (above)" >&2
        exit 1
    fi
done
echo "check-deploy: deploy/config/coordinator.toml and worker.toml load in their binaries"
