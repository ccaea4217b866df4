#!/usr/bin/env bash
# Install the Debian packages Atlas's tests need, only when they are missing.
# Runs as root (CI) or through sudo; prints what it does.
set -euo pipefail

need=()
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v git >/dev/null 2>&1 || need+=(git)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

echo "installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
