#!/usr/bin/env bash
# The README's test command: set-up, lint, format check, the whole test suite, then the docs
# site built with --strict (a broken link, anchor or API page is an error).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q "$@"
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "${SITE_DIR:-site}"
