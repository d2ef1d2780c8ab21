#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 for the test suite (trust auth for
# the local test user); start Debian's cluster if it is installed but stopped.
set -euo pipefail
ready() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
ready && exit 0
if command -v pg_ctlcluster >/dev/null; then
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  if [ -z "$ver" ]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    pg_createcluster "$ver" main >/dev/null
  fi
  conf=/etc/postgresql/$ver/main
  grep -q "meshctl-tests" "$conf/pg_hba.conf" || {
    sed -i '1i host all all 127.0.0.1/32 trust # meshctl-tests' "$conf/pg_hba.conf"
  }
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
fi
for _ in $(seq 1 30); do ready && exit 0; sleep 1; done
echo "PostgreSQL is not answering on 127.0.0.1:5432" >&2
exit 1
