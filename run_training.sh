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

# The environment settings, checked before anything starts: torchrun would hang waiting for a node that cannot come.
need_int() {  # NAME VALUE MIN MAX WHAT: VALUE is an integer in [MIN, MAX] (no MAX: "")
    if ! [[ "$2" =~ ^[0-9]{1,9}$ ]] || (( 10#$2 < $3 )) || { [ -n "$4" ] && (( 10#$2 > $4 )); }; then
        echo "error: $1=$2 must be an integer >= $3${4:+ and <= $4}: $5" >&2
        exit 2
    fi
}
[ -z "${NPROC:-}" ] || need_int NPROC "$NPROC" 1 "" "the number of processes per node (default: one per GPU)"
need_int NNODES "${NNODES:-1}" 1 "" "the number of nodes (default 1)"
need_int MAX_RESTARTS "${MAX_RESTARTS:-3}" 0 "" "how often torchrun restarts a failed group (default 3)"
need_int MASTER_PORT "${MASTER_PORT:-29500}" 1 65535 "a TCP port free on the MASTER_ADDR node (default 29500)"
if [ "${NNODES:-1}" -gt 1 ]; then
    need_int NODE_RANK "${NODE_RANK:-}" 0 "$(( NNODES - 1 ))" "this node's rank, 0 to NNODES-1 (set it on every node)"
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
