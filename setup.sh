#!/usr/bin/env bash
# Set up maskbench on a fresh machine: a virtual environment with the pinned stack (plain pip: the local
# wheelhouse is only visible to pip). Idempotent; about 3-4 minutes the first time, seconds afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if ! .venv/bin/python -c "import benchmark, open_clip, clip_benchmark, submitit, webdataset, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.maskbench-installed ]; then
  .venv/bin/pip install --disable-pip-version-check -q -e '.[dev]'
  touch .venv/.maskbench-installed
fi
# Headless Chromium renders the HTML report in the tests (Debian package; installed when we are root).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup.sh: could not install chromium; the HTML rendering test will be skipped" >&2
fi
