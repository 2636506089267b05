#!/usr/bin/env bash
# Installs the browser the explorer page's tests run in: Debian's chromium, which Playwright (from
# PyPI) drives as the system browser, so nothing downloads a browser. Debian (apt) and root only;
# a no-op when chromium is already there. The apt output goes to a log, shown when it fails.
set -euo pipefail

command -v chromium >/dev/null && exit 0
command -v apt-get >/dev/null || { echo "ci/browser-up.sh: needs apt-get (Debian or Ubuntu)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "ci/browser-up.sh: run as root (apt-get install chromium)" >&2; exit 1; }
log=$(mktemp /tmp/browser-up.XXXXXX.log)
install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o Dpkg::Use-Pty=0 chromium >>"$log" 2>&1
}
if ! install && ! { apt-get update -q >>"$log" 2>&1 && install; }; then
    tail -n 20 "$log" >&2
    echo "ci/browser-up.sh: apt-get install chromium failed (full output in $log)" >&2
    exit 1
fi
echo "ci/browser-up.sh: $(chromium --version 2>/dev/null || echo chromium) installed"
