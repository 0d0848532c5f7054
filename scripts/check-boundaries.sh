#!/usr/bin/env bash
# Architecture invariant: only lethe-ml and lethe-worker link libtorch. Fails if another crate
# of the workspace depends on tch or torch-sys, directly or not.
set -euo pipefail
cd "$(dirname "$0")/.."

allowed="lethe-ml lethe-worker"
status=0
for manifest in crates/*/Cargo.toml; do
    crate=$(basename "$(dirname "$manifest")")
    [[ " $allowed " == *" $crate "* ]] && continue
    if cargo tree --quiet --edges normal,build --package "$crate" --prefix none | grep -qE '^(tch|torch-sys) '; then
        echo "boundary violation: $crate depends on libtorch (tch/torch-sys)" >&2
        status=1
    fi
done
exit $status
