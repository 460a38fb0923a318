#!/usr/bin/env bash
# Make sure a headless-capable Chromium is on PATH (the web-page test of `edgeclip serve` and
# the docs screenshot need it). Installs Debian's `chromium` package with apt-get when missing.
# Prints the path of the browser it found or installed; exits non-zero if it cannot provide one.
set -euo pipefail

find_browser() {
    local name
    for name in chromium chromium-browser google-chrome google-chrome-stable; do
        if command -v "$name" >/dev/null 2>&1; then
            command -v "$name"
            return 0
        fi
    done
    return 1
}

if find_browser; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no chromium on PATH and no apt-get to install it;" \
        "install Chromium or Chrome by hand." >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "ensure_chromium: installing chromium needs root (or sudo)." >&2
        exit 1
    fi
fi

echo "ensure_chromium: installing Debian's chromium package (apt-get)..." >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2

if ! find_browser; then
    echo "ensure_chromium: apt-get finished but no chromium is on PATH." >&2
    exit 1
fi
