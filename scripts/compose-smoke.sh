#!/usr/bin/env bash
# make compose-smoke: docker-compose.yml itself, run for real on this machine. It builds the
# project's images, starts PostgreSQL, the S3 server, the coordinator and a worker, runs a
# deletion request with an audit through them with the CLI, downloads the new version through
# the coordinator, and tears everything down however it ends.
#
# The engine is Docker when one answers, else Podman (installed from Debian when missing, as
# root). Where the upstream base images can be neither found nor pulled (no registry
# reachable), it builds local stand-ins under the same names (deploy/local-bases/): Debian
# bookworm from a debootstrap of the package mirror, Rust 1.95 on it, PostgreSQL 15 from
# Debian, moto's S3 server for minio/minio and a small `mc`. The local bases trust the CAs this
# host trusts, so that builds behind a TLS-inspecting proxy verify. Logs: compose-smoke/.
set -euo pipefail
cd "$(dirname "$0")/.."
export VIRTUAL_ENV=$PWD/.venv PATH=$PWD/.venv/bin:$PATH LIBTORCH_USE_PYTORCH=1

OUT=$PWD/compose-smoke
PROJECT=lethe-smoke
FILES=(-f docker-compose.yml -f deploy/compose/cpu.yml)
step() { printf '\n== %s\n' "$*"; }
mkdir -p "$OUT"

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
    COMPOSE=(docker compose -p "$PROJECT")
else
    missing=()
    for package in podman podman-compose debootstrap; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || { echo "compose-smoke: install ${missing[*]} (as root)" >&2; exit 1; }
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    ENGINE=podman
    COMPOSE=(podman-compose -p "$PROJECT")
fi
echo "compose-smoke: engine $ENGINE ($($ENGINE --version))"

step "base images"
present() { $ENGINE image inspect "$1" >/dev/null 2>&1 || timeout 60 $ENGINE pull -q "$1" >/dev/null 2>&1; }
tag_both() { $ENGINE tag "$1" "localhost/${1#docker.io/}" >/dev/null; }
DEBIAN=docker.io/library/debian:bookworm-slim
if present "$DEBIAN"; then
    echo "$DEBIAN: present"
else
    mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d /var/tmp/lethe-rootfs.XXXXXX)
    echo "$DEBIAN: debootstrap of bookworm from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$mirror" \
        >"$OUT/debootstrap.log" 2>&1
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/" 2>/dev/null || true
    chroot "$rootfs" update-ca-certificates >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    bundle=/etc/ssl/certs/ca-certificates.crt
    tar -C "$rootfs" -c . | $ENGINE import \
        --change "ENV PIP_CERT=$bundle" --change "ENV REQUESTS_CA_BUNDLE=$bundle" \
        --change "ENV SSL_CERT_FILE=$bundle" --change "ENV CARGO_HTTP_CAINFO=$bundle" \
        --change 'CMD ["bash"]' - "$DEBIAN" >/dev/null
    rm -rf "$rootfs"
    tag_both "$DEBIAN"
fi
# Podman inside a container without CAP_SYS_RESOURCE cannot apply its default rlimits.
if [[ $ENGINE == podman ]] && ! $ENGINE run --rm "$DEBIAN" true 2>"$OUT/run-check.log"; then
    if grep -q rlimit "$OUT/run-check.log"; then
        echo "podman cannot set rlimits here: default_ulimits = [] in /etc/containers/containers.conf"
        printf '[containers]\ndefault_ulimits = []\n' >> /etc/containers/containers.conf
        $ENGINE run --rm "$DEBIAN" true
    else
        cat "$OUT/run-check.log" >&2
        exit 1
    fi
fi
for entry in rust.Containerfile=docker.io/library/rust:1.95-bookworm \
    postgres.Containerfile=docker.io/library/postgres:15 \
    s3.Containerfile=docker.io/minio/minio:latest \
    mc.Containerfile=docker.io/minio/mc:latest; do
    file=${entry%%=*} image=${entry#*=}
    if present "$image"; then
        echo "$image: present"
    else
        echo "$image: building the local stand-in deploy/local-bases/$file"
        $ENGINE build -q -t "$image" -f "deploy/local-bases/$file" deploy/local-bases \
            >"$OUT/base-${file%%.*}.log" 2>&1 || { tail -30 "$OUT/base-${file%%.*}.log" >&2; exit 1; }
        tag_both "$image"
    fi
done

step "build the project's images (docker-compose.yml's build sections)"
started=$SECONDS
"${COMPOSE[@]}" "${FILES[@]}" build coordinator worker >"$OUT/build.log" 2>&1 \
    || { tail -40 "$OUT/build.log" >&2; exit 1; }
echo "built in $((SECONDS - started)) s"

cleanup() {
    local status=$?
    step "tear down"
    for container in $($ENGINE ps -a --filter "name=^$PROJECT" --format '{{.Names}}'); do
        $ENGINE logs "$container" >"$OUT/container-$container.log" 2>&1 || true
    done
    "${COMPOSE[@]}" "${FILES[@]}" down -v >"$OUT/down.log" 2>&1 || true
    if ((status == 0)); then echo "compose-smoke: passed"; else echo "compose-smoke: FAILED (exit $status); logs in $OUT" >&2; fi
    exit $status
}
trap cleanup EXIT

step "start PostgreSQL, the S3 server and the coordinator"
export LETHE_WORKER_TOKEN=""
"${COMPOSE[@]}" "${FILES[@]}" up -d postgres minio minio-bucket coordinator >"$OUT/up.log" 2>&1 \
    || { cat "$OUT/up.log" >&2; exit 1; }
# The container of a service (podman-compose names it project_service_1, Docker project-service-1).
container_of() { $ENGINE ps -a --filter "name=^${PROJECT}[_-]$1[_-]1\$" --format '{{.Names}}' | head -1; }
# Docker runs health checks itself; Podman leaves it to systemd timers, which a machine without
# systemd lacks, so the script runs the image's own check and Podman records its result.
healthy() {
    local container
    container=$(container_of "$1")
    [[ -n $container ]] || return 1
    if [[ $ENGINE == podman ]]; then
        podman healthcheck run "$container" >/dev/null 2>&1 || return 1
    fi
    [[ $($ENGINE inspect --format '{{.State.Health.Status}}' "$container") == healthy ]]
}
for _ in $(seq 120); do healthy postgres && break; sleep 1; done
healthy postgres || { echo "postgres never became healthy" >&2; exit 1; }
echo "postgres: healthy (its compose health check, pg_isready)"

# The token is the line of its own (lethe_w_…, lethe_t_…) among what the compose tool prints.
token() {
    "${COMPOSE[@]}" "${FILES[@]}" run --rm coordinator credentials create "$@" 2>>"$OUT/tokens.log" \
        | tr -d '\r' | grep -E '^lethe_[a-z]_[0-9a-f]+$' | tail -1
}
for _ in $(seq 60); do
    LETHE_WORKER_TOKEN=$(token --worker --name compose-workers) && [[ -n $LETHE_WORKER_TOKEN ]] && break
    sleep 2
done
[[ -n $LETHE_WORKER_TOKEN ]] || { echo "could not issue the workers' token" >&2; exit 1; }
export LETHE_TOKEN
LETHE_TOKEN=$(token --tenant acme --name compose-smoke)
export LETHE_WORKER_TOKEN LETHE_COORDINATOR=http://127.0.0.1:50051

step "start the worker"
"${COMPOSE[@]}" "${FILES[@]}" up -d worker >>"$OUT/up.log" 2>&1 || { cat "$OUT/up.log" >&2; exit 1; }

step "the containers"
$ENGINE ps --filter "name=^$PROJECT" --format '{{.Names}}  {{.Status}}'

# The same targets as make test builds, so that nothing is built twice.
cargo build -q --workspace --all-targets
LETHE=$PWD/target/debug/lethe
for _ in $(seq 60); do "$LETHE" operations list >/dev/null 2>&1 && break; sleep 1; done

step "a model trained on fmnist-tiny, uploaded to the S3 server, registered"
"$LETHE" train --dataset fmnist-tiny --out "$OUT/base.safetensors" >"$OUT/train.log" 2>&1
python - "$OUT/base.safetensors" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9000", region_name="us-east-1",
                  aws_access_key_id="lethe", aws_secret_access_key="lethe-secret")
s3.upload_file(sys.argv[1], "lethe", "artifacts/models/base.safetensors")
print("uploaded s3://lethe/artifacts/models/base.safetensors")
PY
SHA=$(sha256sum "$OUT/base.safetensors" | cut -d' ' -f1)
"$LETHE" datasets register fmnist-tiny builtin:fmnist-tiny
"$LETHE" models register shoes s3://lethe/artifacts/models/base.safetensors --dataset fmnist-tiny --sha256 "$SHA"

step "the index, then a deletion request audited against 16 retrains, through the containers"
"$LETHE" submit index shoes --members 64 --members-per-task 32 >"$OUT/index.txt"
tail -3 "$OUT/index.txt"
"$LETHE" submit deletion shoes --forget 3,5,8,13,21 --audit-oracles 16 | tee "$OUT/deletion.txt"
grep -q "SUCCEEDED" "$OUT/deletion.txt"
grep -q "| DMM" "$OUT/deletion.txt"
REQUEST=$(head -1 "$OUT/deletion.txt")

step "download the new version through the coordinator"
"$LETHE" download "$REQUEST" --out "$OUT/shoes-v1.safetensors"

step "the Go example of docs/clients.md against the same stack: another request, its download"
scripts/check-go-example.sh --keep "$OUT" >/dev/null
"$OUT/forget" -coordinator 127.0.0.1:50051 -model shoes -forget 34,55 \
    -request-id compose-smoke-go -out "$OUT/shoes-v2.safetensors" | tail -3
"$LETHE" models versions shoes
