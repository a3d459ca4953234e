#!/bin/sh
# Image entrypoint: `docker run IMAGE preprocess --config ...` runs `ssr preprocess --config ...`.
# A first word that names a program in the image (sh, python3, ssr, ...) runs that program as
# is, which is what kfp.local's DockerRunner and other runners that only set the container's
# arguments rely on. Without arguments: `ssr --help`.
set -e
if [ "$#" -eq 0 ]; then
  exec ssr --help
fi
case "$1" in
  -*) exec ssr "$@" ;;
esac
if command -v -- "$1" >/dev/null 2>&1; then
  exec "$@"
fi
exec ssr "$@"
