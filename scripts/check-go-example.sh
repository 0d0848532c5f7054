#!/usr/bin/env bash
# The Go example of docs/clients.md (clients/go/forget) must compile against stubs generated
# from proto/lethe/v1, as a Go team would generate them: protoc with protoc-gen-go and
# protoc-gen-go-grpc, google.longrunning and google.rpc from genproto (never generated again).
# `go vet` over the stubs and the example, in GOPATH mode against the Go packages Debian ships
# (make setup installs them), so that no module proxy is needed.
# With `--keep DIR` the built example is left in DIR (compose-smoke runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
keep=""
if [[ ${1:-} == --keep ]]; then
    keep=$(realpath "$2")
fi

for tool in go protoc protoc-gen-go-grpc; do
    command -v "$tool" >/dev/null || { echo "check-go-example: $tool is missing (make setup installs it)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GO111MODULE=off GOFLAGS= GOPATH="$work:/usr/share/gocode" GOCACHE="$work/cache"
# protoc-gen-go from the protobuf-go sources Debian ships (its own package is the older v1).
go build -o "$work/bin/protoc-gen-go" google.golang.org/protobuf/cmd/protoc-gen-go
export PATH="$work/bin:$PATH"

package=lethe.dev/lethe/v1
mapping="Mgoogle/longrunning/operations.proto=google.golang.org/genproto/googleapis/longrunning"
mapping+=",Mgoogle/rpc/status.proto=google.golang.org/genproto/googleapis/rpc/status"
mapping+=",Mgoogle/rpc/error_details.proto=google.golang.org/genproto/googleapis/rpc/errdetails"
protos=()
for proto in proto/lethe/v1/*.proto; do
    protos+=("$proto")
    mapping+=",M${proto#proto/}=$package;lethev1"
done
mkdir -p "$work/src"
protoc -I proto --go_out="$work/src" --go_opt="$mapping" \
    --go-grpc_out="$work/src" --go-grpc_opt="$mapping" "${protos[@]}"
mkdir -p "$work/src/lethe.dev/clients"
cp -r clients/go/forget "$work/src/lethe.dev/clients/forget"
(cd "$work/src" && go vet ./lethe.dev/lethe/v1 ./lethe.dev/clients/forget)
(cd "$work/src" && go build -o "$work/bin/forget" ./lethe.dev/clients/forget)
[[ -z $keep ]] || cp "$work/bin/forget" "$keep/forget"
echo "check-go-example: clients/go/forget builds and vets against stubs of ${#protos[@]} protos"
