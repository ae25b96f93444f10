#!/usr/bin/env bash
# System tools the benchmarks drive (Debian packages): wrk, the HTTP load generator of
# `make bench-serving` and its smoke test. Installs only what is missing.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
  { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${missing[@]}"; }
