#!/usr/bin/env bash
# A multi-seed study: train every (attn_norm, seed) pair, evaluate each run, write study/<name>/report.md.
#
#   ./run_study.sh CONFIG [--norms A,B] [--seeds 0,1,2] [--sweep key=a,b,c] [--name NAME] [--jobs N] [--rerun]
#                  [--key=value ...]
#
# --norms: default every registered normalizer (normalizers/__init__.py); --sweep tunes a setting per normalizer.
# e.g. ./run_study.sh config/study_cpu.py   (the quick CPU study). Everything happens in analysis/study.py
# (--help there says more); this script only runs it from the repository root, where train.py finds data/.
set -euo pipefail
cd "$(dirname "$0")"
exec python -m analysis.study "$@"
