#!/usr/bin/env bash
# One-time set-up on a fresh machine; quick no-op when everything is already there.
# Installs: Debian's WordNet database (for nltk, offline) and Chromium (browser tests), the pinned Python
# packages (requirements-test.txt: the runtime set of requirements.txt, which a Space installs, and the test tools),
# d3s itself.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(wordnet-base wordnet-sense-index chromium)  # chromium: the browser tests
if ! dpkg -s "${apt_packages[@]}" >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

python -m pip install --disable-pip-version-check -q -r requirements-test.txt  # the runtime set (requirements.txt) and the test tools
python -m pip install --disable-pip-version-check -q --no-deps -e .
python -m d3s.wordnet_data
