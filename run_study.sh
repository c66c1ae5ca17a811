#!/usr/bin/env bash
# A multi-seed study: train every (variant, seed) pair, evaluate each run, write study/<name>/report.md.
#
#   ./run_study.sh CONFIG [--norms A,B] [--gates G,H] [--optimizers adamw,muon] [--blocks gpt2,llama] [--seeds 0,1,2]
#                  [--sweep key=a,b,c] [--name NAME] [--jobs N] [--rerun] [--key=value ...] [--launcher local|slurm]
#                  [--no-wait] [--slurm_partition P --slurm_time MIN ...]
#
# A variant: an attn_norm, with an output gate and an optimizer. --norms: default every registered normalizer
# (normalizers/__init__.py), the first the baseline; --gates: each gate listed (normalizers/gates.py) adds the
# baseline with that gate; --optimizers: every variant trained with each optimizer listed (default: the config's);
# --blocks: every variant trained in each block listed (model.BLOCKS: gpt2, llama; default: the config's);
# --sweep tunes a setting per variant; --launcher slurm makes each run a Slurm job (README: "The GPU study on a Slurm
# cluster"). e.g. ./run_study.sh config/study_cpu.py   (the quick CPU study). Everything
# happens in analysis/study.py (--help there says more); this script only runs it from the repository root, where
# train.py finds data/.
set -euo pipefail
cd "$(dirname "$0")"
exec python -m analysis.study "$@"
