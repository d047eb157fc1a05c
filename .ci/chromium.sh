#!/usr/bin/env bash
# Debian's Chromium for the browser test of the HTML report (tests/test_report_browser.py).
#
#   .ci/chromium.sh      # installs `chromium` with apt-get when /usr/bin/chromium is missing
#
# Idempotent: with /usr/bin/chromium present it only prints the version. Progress goes to stderr;
# stdout stays empty. Runs apt-get as root, or through sudo otherwise.
set -euo pipefail

BIN=/usr/bin/chromium
say() { echo "[chromium.sh] $*" >&2; }
# the Debian launcher script prints shell noise on stderr on some machines; the version is on stdout
version() { "$BIN" --version 2>/dev/null || true; }

if [[ -x $BIN ]]; then
    say "already installed: $(version)"
    exit 0
fi
SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
say "installing chromium with apt-get"
# env, not export: sudo would drop the variable
apt_install() {
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >&2
}
apt_install || { say "apt-get update"; $SUDO apt-get update -q >&2; apt_install; }
[[ -x $BIN ]] || { say "error: $BIN is still missing after apt-get install chromium"; exit 1; }
say "installed: $(version)"
