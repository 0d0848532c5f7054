#!/bin/sh
# `mc alias set NAME URL USER PASSWORD`: remembers URL once it answers; `mc mb
# [--ignore-existing] NAME/BUCKET`: creates the bucket (an S3 PUT; moto needs no signature).
set -eu
aliases=/tmp/mc-aliases
case "${1:-} ${2:-}" in
    "alias set")
        curl -fsS -o /dev/null "$4/" || exit 1
        echo "$3 $4" >> "$aliases" ;;
    "mb "*)
        shift
        [ "$1" = --ignore-existing ] && shift
        name=${1%%/*} bucket=${1#*/}
        url=$(awk -v n="$name" '$1 == n { u = $2 } END { print u }' "$aliases")
        [ -n "$url" ] || { echo "mc stand-in: no alias $name" >&2; exit 1; }
        curl -fsS -X PUT -o /dev/null "$url/$bucket" ;;
    *) echo "mc stand-in: unsupported: $*" >&2; exit 2 ;;
esac
