#!/usr/bin/env bash
# What a session lent a GPU runs, in one command of at most 10 minutes, from the repository root:
#
#   bash benchmarks/gpu_session.sh [STEP ...]      STEP: tests attention train shakespeare (default: all, in order)
#   bash benchmarks/gpu_session.sh study           the GPU study (config/study_gpu.py): its own command, all of it
#
# The steps share GPU_SESSION_SECONDS (default 560, under the device tool's 600 per command) by their estimated
# costs (COST below, seconds on an H100): before each step, what is left is split over the steps still to run in
# proportion to their costs, so every step gets a real share and time a step leaves unused goes to the later
# ones. A step that reaches its limit is stopped with SIGINT (pytest then prints what it ran; every benchmark has
# written each row as it measured it) and the next one starts. What did not fit is one more command, e.g.
# `bash benchmarks/gpu_session.sh shakespeare`: no step needs another's output. Nothing is installed: the
# machine's torch and triton are used as they are, and nothing here imports datasets, wandb or nbformat. Everything
# lands in $OUT, six files (the device tool brings back at most eight):
#
#   summary.md     each step: status, limit, seconds, command; printed at the end too
#   tests.log      the GPU tests: pytest -m cuda, the Triton kernels compiled for every target, torch.compile
#   attention.md   python -m benchmarks.attention: every attn_norm, bf16, causal, d 64 and 128, T 1024 … 8192
#   train.md       python -m benchmarks.train_throughput: GPT-2 124M (config/train_gpt2.py), block 1024, bf16,
#                  compiled, the largest micro-batch that fits, every attn_norm and attn_gate mode
#   session.log    everything else the steps printed
#   runs.tar.gz    the config/shakespeare_char/{softmax,softmax1,symax}.py runs' metrics.jsonl (shortened to
#                  SHAKESPEARE_ITERS iterations, default 500), or study/study_gpu/ (report and plots) for `study`
#
# GPU_SESSION_DRY_RUN=1 runs every step at a tiny size on the CPU, to test this plumbing without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."

dry=${GPU_SESSION_DRY_RUN:-0}
budget=${GPU_SESSION_SECONDS:-560}
OUT=${OUT:-$(mktemp -d)}
runs=$(mktemp -d)  # the training runs' out_dirs: fresh, so nothing resumes an older run
trap 'rm -rf "$runs"' EXIT
mkdir -p "$OUT"
log=$OUT/session.log
summary=$OUT/summary.md
steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(tests attention train shakespeare)

printf '# GPU session %s\n\n- commit: %s%s\n- steps: %s; budget %ss%s\n\n| step | status | limit s | seconds | command |\n|---|---|---:|---:|---|\n' \
    "$(date -Is)" "$(git rev-parse --short HEAD 2>/dev/null)" "$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')" \
    "${steps[*]}" "$budget" "$([ "$dry" = 1 ] && echo '; DRY RUN on CPU at tiny sizes')" > "$summary"

left() { echo $(( budget - SECONDS )); }

# Estimated seconds of each step on an H100 (compilation included), the weights of the time split.
declare -A COST=([tests]=90 [attention]=110 [train]=220 [shakespeare]=120 [study]=1)

# share STEP: this step's part of what is left (less a 15 s margin per step still to run), by the costs of the
# steps from this one on.
share() {
    local rest=0 s found=0
    for s in "${steps[@]}"; do
        [ "$s" = "$1" ] && found=1
        (( found )) && rest=$(( rest + ${COST[$s]:-1} ))
    done
    echo $(( ($(left) - 15) * ${COST[$1]:-1} / (rest > 0 ? rest : 1) ))
}

# run NAME LIMIT LOGFILE COMMAND...: COMMAND under min(LIMIT, time left), output appended to LOGFILE, one summary row.
# A command that ignores SIGINT (started with it ignored) is killed 15 s after the limit: that margin is kept free.
run() {
    local name=$1 limit=$2 file=$3 status rc t0=$SECONDS
    shift 3
    (( limit > $(left) - 15 )) && limit=$(( $(left) - 15 ))
    if (( limit < 15 )); then
        status="skipped: no time left"
    else
        printf '\n== %s (limit %ss): %s\n' "$name" "$limit" "$*" | tee -a "$file"
        timeout --signal=INT --kill-after=15 "$limit" "$@" >> "$file" 2>&1
        rc=$?
        case $rc in
            0) status=ok ;;
            124|137) status="stopped at the ${limit}s limit" ;;
            *) status="failed (exit $rc)" ;;
        esac
    fi
    echo "$name: $status" | tee -a "$log"
    printf '| %s | %s | %s | %s | `%s` |\n' "$name" "$status" "$limit" "$(( SECONDS - t0 ))" "$*" >> "$summary"
}

finish() {
    printf '\n%s\n' "- outputs: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$summary"
    echo
    cat "$summary"
}

if ! python -c "import torch, triton" >> "$log" 2>&1; then
    echo "| preflight | failed: python cannot import torch and triton (nothing is installed here) | 0 | 0 | |" >> "$summary"
    finish
    exit 1
fi
iters=${SHAKESPEARE_ITERS:-500}
if [ "$dry" = 1 ]; then
    device=(--device=cpu)
    tests=(python -m pytest -q -m cuda tests/test_kernels.py tests/test_gpu_readiness.py)
    attention=(--dtype float32 --T 32 --d 8 --H 2 --reps 1)
    train=(config/shakespeare_char/cpu.py --n_layer=1 --n_head=2 --n_embd=16 --block_size=8 --compile=False
           --vocab_size 65 --iters 1 --warmup 0)
    shakespeare=(--device=cpu --dtype=float32 --compile=False --n_layer=1 --n_head=2 --n_embd=16 --block_size=16
                 --batch_size=2 --max_iters=2 --eval_interval=2 --eval_iters=1 --log_stats=False)
else
    if ! python -c "import torch; assert torch.cuda.is_available()" >> "$log" 2>&1; then
        echo "| preflight | failed: torch sees no CUDA GPU (GPU_SESSION_DRY_RUN=1 tests this script on a CPU) | 0 | 0 | |" >> "$summary"
        finish
        exit 1
    fi
    device=()
    # The GPU's own tests, the kernels compiled for every target, and torch.compile; the rest of the suite is CI's.
    tests=(python -m pytest -q tests/test_kernels.py tests/test_elementwise.py
           tests/test_kernel_compile.py tests/test_gpu_readiness.py tests/test_compile.py)
    attention=(--dtype bfloat16 --d 64 128 --T 1024 2048 4096 8192)
    # Compiling dominates each row: one accumulation step and few iterations keep 13+ rows in the limit.
    train=(config/train_gpt2.py --block_size=1024 --dtype=bfloat16 --compile=True --gradient_accumulation_steps=1
           --max_batch_size 128 --iters 10 --warmup 3)
    # nanoGPT's 5000 iterations take minutes per run: a session trains each long enough to compare the curves.
    shakespeare=("--max_iters=$iters" "--lr_decay_iters=$iters" "--eval_interval=$(( iters / 2 ))" --eval_iters=50)
fi

for step in "${steps[@]}"; do
    case $step in
        tests)
            run tests "$(share tests)" "$OUT/tests.log" "${tests[@]}" ;;
        attention)
            run attention "$(share attention)" "$log" python -m benchmarks.attention "${device[@]}" "${attention[@]}" \
                --out "$OUT/attention.md" ;;
        train)
            run train "$(share train)" "$log" python -m benchmarks.train_throughput "${train[@]}" "${device[@]}" \
                --batch_size=auto --out "$OUT/train.md" ;;
        shakespeare)
            # Three runs, each in an equal part of the step's share.
            part=$(( $(share shakespeare) / 3 ))
            for norm in softmax softmax1 symax; do
                run "shakespeare_char $norm" "$part" "$log" ./run_training.sh "config/shakespeare_char/$norm.py" \
                    "${shakespeare[@]}" "--out_dir=$runs/shakespeare_char-$norm"
            done
            (cd "$runs" && find . -name metrics.jsonl) > "$runs/files"
            tar czf "$OUT/runs.tar.gz" -C "$runs" -T "$runs/files" ;;
        study)
            # All the time there is: a study cut off resumes where it stopped when this is run again. (Not in a
            # dry run: it would write study/study_gpu/ in the repository; tests/test_study.py covers the study.)
            if [ "$dry" = 1 ]; then
                printf '| study_gpu | skipped in a dry run | 0 | 0 | |\n' >> "$summary"
            else
                run study_gpu "$(left)" "$log" ./run_study.sh config/study_gpu.py
                [ -d study/study_gpu ] && tar czf "$OUT/runs.tar.gz" -C study study_gpu
            fi ;;
        *)
            echo "unknown step '$step' (steps: tests attention train shakespeare, or study alone)" | tee -a "$log"
            printf '| %s | unknown step | 0 | 0 | |\n' "$step" >> "$summary" ;;
    esac
done
finish
