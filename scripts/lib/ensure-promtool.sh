#!/usr/bin/env bash
# Makes sure `promtool` (Prometheus's checker) is on PATH: installs Debian's `prometheus`
# package when it is missing. Idempotent; prints the path of promtool on success.
# Used by weir-metrics' tests (`promtool check metrics` / `check rules`) and by CI.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
  command -v promtool
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-promtool: promtool is missing and apt-get is not available; install Prometheus's promtool by hand" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "ensure-promtool: promtool is missing and this is not root (no sudo); run: apt-get install -y prometheus" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# Serialise concurrent installs (several test processes may call this at once).
exec 9>/tmp/weir-ensure-promtool.lock
flock 9
if ! command -v promtool >/dev/null 2>&1; then
  $SUDO apt-get update -qq >&2
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >&2
  # The package starts a Prometheus server through its init scripts on some systems; Weir only
  # wants the checker, so stop it again if it came up (ignore failures: often no init system).
  $SUDO service prometheus stop >/dev/null 2>&1 || true
fi
command -v promtool
