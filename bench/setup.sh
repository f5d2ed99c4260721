#!/bin/sh
# Installs what the load harness (bench/cmd/meshbench) needs beyond Go:
# HAProxy, the third-party proxy it compares Verge with. Debian/Ubuntu; run as root.
set -eu
if command -v haproxy >/dev/null 2>&1; then
	haproxy -v | head -n 1
	exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
	echo "setup.sh: run as root (apt-get install haproxy)" >&2
	exit 1
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy
# The package enables a system service; the harness starts its own processes.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet haproxy 2>/dev/null; then
	systemctl disable --now haproxy || true
fi
haproxy -v | head -n 1
