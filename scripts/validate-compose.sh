#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine: `docker compose config -q` parses it,
# interpolates it and validates it against the Compose schema, once as it is and once with the
# `monitoring` profile. It uses the `docker compose` plugin where there is one, else Debian's
# docker-compose (1.29, which validates against its own copy of the Compose schema: a field newer
# than 2021 would be rejected there though Compose v2 accepts it). docker-compose is in
# scripts/setup.sh's Debian packages; run as root, this script installs it when missing. Also
# checks that the monitoring files the compose file mounts parse and agree with each other.
set -euo pipefail
cd "$(dirname "$0")/.."

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    if ! command -v docker-compose >/dev/null 2>&1; then
        if [[ $(id -u) -ne 0 ]]; then
            echo "validate-compose: neither 'docker compose' nor docker-compose (run scripts/setup.sh as root)" >&2
            exit 1
        fi
        echo "validate-compose: installing Debian's docker-compose"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
    fi
    compose=(docker-compose)
fi

status=0
for profile in "" monitoring; do
    args=()
    label="docker-compose.yml"
    if [[ -n $profile ]]; then
        args=(--profile "$profile")
        label="docker-compose.yml with profile $profile"
    fi
    if "${compose[@]}" -f docker-compose.yml "${args[@]}" config -q; then
        echo "validate-compose: $label is valid (${compose[*]} config)"
    else
        echo "validate-compose: $label is invalid (${compose[*]} config, above)" >&2
        status=1
    fi
done

# The monitoring files: Prometheus' and Grafana's provisioning YAML parse, the dashboards are
# JSON, every panel's datasource is the provisioned one, and every series a panel queries is
# one that the coordinator or the workers register (crates/*/src/metrics.rs).
python=${VIRTUAL_ENV:-$PWD/.venv}/bin/python
[[ -x $python ]] || python=python3
"$python" - <<'PY' || status=1
import glob, json, sys
try:
    import yaml
except ImportError:
    yaml = None
    print("validate-compose: no PyYAML in this Python (make setup installs it): the Prometheus and "
          "Grafana YAML files were not parsed")
bad = False
if yaml is not None:
    for path in ["deploy/prometheus/prometheus.yml", *glob.glob("deploy/grafana/provisioning/*/*.yml")]:
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except Exception as e:
            print(f"validate-compose: {path}: {e}", file=sys.stderr)
            bad = True
    with open("deploy/grafana/provisioning/datasources/prometheus.yml") as f:
        uids = {d.get("uid") for d in yaml.safe_load(f)["datasources"]}
else:
    uids = None
import re
registered = set()
for source in glob.glob("crates/*/src/metrics.rs"):
    with open(source) as f:
        registered |= set(re.findall(r'register\(\s*"(lethe_[a-z_]+)"', f.read()))
suffixes = ("", "_total", "_bucket", "_sum", "_count")
for path in sorted(glob.glob("deploy/grafana/dashboards/*.json")):
    try:
        with open(path) as f:
            dashboard = json.load(f)
    except Exception as e:
        print(f"validate-compose: {path}: {e}", file=sys.stderr)
        bad = True
        continue
    for panel in dashboard.get("panels", []):
        for target in panel.get("targets", []):
            for name in re.findall(r"\blethe_[a-z_]+", target.get("expr", "")):
                if not any(name.endswith(x) and name[: len(name) - len(x)] in registered
                           for x in suffixes if x == "" or name.endswith(x)):
                    print(f"validate-compose: {path}: panel {panel.get('title')!r} queries {name}, "
                          f"which no binary exports", file=sys.stderr)
                    bad = True
        for source in [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]:
            uid = (source or {}).get("uid")
            if uids is not None and uid not in uids:
                print(f"validate-compose: {path}: panel {panel.get('title')!r} uses datasource {uid!r}, "
                      f"not one provisioned ({sorted(uids)})", file=sys.stderr)
                bad = True
if not bad:
    print("validate-compose: the Prometheus config, Grafana provisioning and dashboards parse and agree")
sys.exit(1 if bad else 0)
PY
((status == 0)) || echo "validate-compose: FAILED (see above)" >&2
exit $status
