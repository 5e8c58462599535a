#!/usr/bin/env bash
# The PostgreSQL server the tests start a throw-away cluster from (tests/postgres_cluster.py).
# Installed with Debian's package when missing; where that cannot be done (not root, no apt),
# this says so and succeeds: the PostgreSQL half of the tests is then skipped with that reason.
set -euo pipefail
if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "PostgreSQL is not installed and cannot be installed here (needs root and apt-get):" \
       "its tests will be skipped. Install it with: apt-get install -y postgresql"
  exit 0
fi
echo "Installing PostgreSQL (Debian package) for the storage tests"
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }; then
  echo "apt-get could not install postgresql: the PostgreSQL tests will be skipped."
fi
