#!/usr/bin/env bash
# Regenerates the locks from pyproject.toml's requirements:
#
#     bash requirements/update.sh              # keep every locked version that still fits
#     bash requirements/update.sh --upgrade    # move everything to the newest fitting release
#
# main.txt is what `pip install -e .` needs, dev.txt adds the dev extra at the same versions.
# Both are universal (markers for every platform and Python >= 3.11) and resolved against PyPI
# by uv, a pinned release installed into a throwaway venv: nothing but python3 is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$(mktemp -d)"
trap 'rm -rf "$tools"' EXIT
python3 -m venv "$tools"
"$tools/bin/pip" install -q --disable-pip-version-check uv==0.13.8
compile=("$tools/bin/uv" pip compile pyproject.toml --universal --python-version 3.11
         --fork-strategy fewest --quiet --custom-compile-command "bash requirements/update.sh" "$@")
"${compile[@]}" -o requirements/main.txt
"${compile[@]}" --extra dev -c requirements/main.txt -o requirements/dev.txt
echo "wrote requirements/main.txt and requirements/dev.txt; commit them with pyproject.toml"
