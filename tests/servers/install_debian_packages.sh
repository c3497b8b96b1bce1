#!/usr/bin/env bash
# Install the Debian packages that the STAC API tests need (PostgreSQL with
# PostGIS for a real pgstac server on 127.0.0.1). Runs apt-get only as root
# and only when a package is missing; elsewhere it prints which tests will skip.
set -euo pipefail

packages=(postgresql postgresql-15-postgis-3)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "note: ${missing[*]} not installed and not root: the pgstac STAC API tests will be skipped" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts a cluster on install; the tests run their own on a free port.
service postgresql stop >/dev/null 2>&1 || true
