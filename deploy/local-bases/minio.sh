#!/bin/sh
# `minio server DIR [--console-address ADDR]`: moto's S3 server on :9000 (DIR and the console
# are ignored).
[ "$1" = server ] || { echo "minio stand-in: only 'server' is supported" >&2; exit 2; }
exec /opt/moto/bin/moto_server -H 0.0.0.0 -p 9000
