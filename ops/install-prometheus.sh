#!/usr/bin/env bash
# Installs Debian's Prometheus server for the metrics integration test
# (tests/prometheus.rs), without starting the packaged service: the test
# runs its own instance on a loopback port.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install-prometheus: run as root (or: sudo $0)" >&2
    exit 1
fi

# Keep the package's post-install from starting a system-wide service.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version 2>&1 | head -n 1
