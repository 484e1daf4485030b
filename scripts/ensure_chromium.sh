#!/usr/bin/env bash
# Make sure Debian's Chromium is installed for the browser tests (tests/browser).
# Installs the `chromium` package with apt-get when missing; never downloads a browser
# any other way. The tests use ${CTVIS_TEST_CHROMIUM:-/usr/bin/chromium}.
set -euo pipefail
CHROMIUM="${CTVIS_TEST_CHROMIUM:-/usr/bin/chromium}"

if [ ! -x "$CHROMIUM" ]; then
  if [ "$CHROMIUM" != "/usr/bin/chromium" ]; then
    echo "[chromium] CTVIS_TEST_CHROMIUM=$CHROMIUM is not an executable" >&2
    exit 1
  fi
  echo "[chromium] chromium not found; installing Debian's chromium package with apt-get"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if [ ! -x "$CHROMIUM" ]; then
  echo "[chromium] $CHROMIUM is still missing after apt-get install chromium" >&2
  exit 1
fi
echo "[chromium] $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
