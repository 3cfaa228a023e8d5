#!/bin/sh
# The web app's screenshots in docs/ (README, docs/webui.md): the browser test that drives the whole
# job on the embedded toy model writes one per tab into $LORASTORY_UI_SCREENSHOTS.
#   scripts/ui_screenshots.sh            # from the repository root, with .venv set up (make setup)
set -e
cd "$(dirname "$0")/.."
LORASTORY_UI_SCREENSHOTS="$PWD/docs" LORASTORY_REQUIRE_BROWSER=1 \
    "${PYTHON:-.venv/bin/python}" -m pytest -q tests/ui/test_whole_job.py "$@"
