#!/usr/bin/env bash
# A multi-seed study: train every (attn_norm, seed) pair, evaluate each run, write study/<name>/report.md.
#
#   ./run_study.sh CONFIG [--norms softmax,softmax1,symax,diff] [--seeds 0,1,2] [--name NAME] [--jobs N] [--key=value ...]
#
# e.g. ./run_study.sh config/study_cpu.py   (the quick CPU study). Everything happens in analysis/study.py;
# this script only runs it from the repository root, where train.py finds data/.
set -euo pipefail
cd "$(dirname "$0")"
exec python -m analysis.study "$@"
