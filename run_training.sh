#!/usr/bin/env bash
# Train with one process per visible GPU (one process on a machine without one), through torchrun.
#
#   ./run_training.sh CONFIG [--key=value ...]
#
# The config and the overrides go to train.py untouched: this script never overrides the config.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT on every node.
# NPROC overrides the number of processes per node; MAX_RESTARTS (default 3) is how often torchrun restarts
# a failed group, which then resumes from the newest checkpoint in out_dir (train.py's init_from=auto).
set -euo pipefail
cd "$(dirname "$0")"

if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    if [ $# -lt 1 ]; then echo "error: no config file given" >&2; else echo "error: config file '$1' not found" >&2; fi
    echo "usage: ./run_training.sh CONFIG [--key=value ...]   (CONFIG is a file in config/, e.g. config/softmax1.py)" >&2
    exit 2
fi

# The dataset as train.py will resolve it; prepare it first when it can be prepared offline.
# A bad config or override stops here with train.py's one-line error. The same call counts the GPUs.
resolved=$(python -c '
import sys, torch, train
try:
    print(torch.cuda.device_count(), train.load_config(sys.argv[1:]).dataset)
except train.ConfigError as e:
    sys.exit(f"error: {e}")' "$@" | tail -n 1)
gpus=${resolved%% *}
dataset=${resolved#* }
if ! python -c 'import sys, prepare_data; sys.exit(not prepare_data.is_prepared(f"data/{sys.argv[1]}"))' "$dataset"; then
    if python -c 'import sys, prepare_data; sys.exit(sys.argv[1] not in prepare_data.OFFLINE_DATASETS)' "$dataset"; then
        python prepare_data.py "$dataset"
    else
        echo "error: dataset '$dataset' is not prepared: run  python prepare_data.py $dataset  first" >&2
        exit 2
    fi
fi

nproc=${NPROC:-$(( gpus > 0 ? gpus : 1 ))}
# Every check train.py makes before spending compute (settings for this number of processes, the data), here and
# once: torchrun would retry a user error MAX_RESTARTS times.
python -c '
import sys, train
try:
    train.preflight(sys.argv[2:], int(sys.argv[1]))
except (train.ConfigError, train.CheckpointError) as e:
    sys.exit(f"error: {e}")' "$(( nproc * ${NNODES:-1} ))" "$@"

if [ "${NNODES:-1}" -gt 1 ]; then
    rendezvous=(--nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK}" --rdzv-backend=c10d
                --rdzv-endpoint="${MASTER_ADDR:?set MASTER_ADDR}:${MASTER_PORT:-29500}")
else
    rendezvous=(--standalone)
fi
# torchrun shares its rendezvous TCPStore with the workers by default; a restarted group then reads the previous
# group's gloo/NCCL addresses from it and cannot connect (pytorch/pytorch#135712). Each group gets its own store.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec torchrun "${rendezvous[@]}" --nproc_per_node="$nproc" --max-restarts="${MAX_RESTARTS:-3}" train.py "$@"
