#!/usr/bin/env bash
# What a session lent a GPU runs, in one command of at most 10 minutes, from the repository root:
#
#   bash benchmarks/gpu_session.sh [STEP ...]      STEP: tests attention train shakespeare (default: all, in order)
#
# Each step runs under its own time limit, cut to what is left of GPU_SESSION_SECONDS (default 560, under the
# device tool's 600 per command), so one slow step cannot eat the rest; a step that runs out of time is stopped
# with SIGINT (pytest then prints what it ran; the benchmarks keep every row they measured) and the next one
# starts. What did not fit is one more command, e.g. `bash benchmarks/gpu_session.sh shakespeare`: no step needs
# another's output. Nothing is installed: the machine's torch and triton are used as they are. Everything lands in
# $OUT, six files (the device tool brings back at most eight):
#
#   summary.md     each step: status, seconds, command; printed at the end too
#   tests.log      pytest -m cuda (stops at the first failure), then the rest of the suite, time-limited
#   attention.md   python -m benchmarks.attention: every attn_norm, bf16, causal, d 64 and 128, T 1024 … 8192
#   train.md       python -m benchmarks.train_throughput: GPT-2 124M (config/train_gpt2.py), block 1024, bf16,
#                  compiled, the largest micro-batch that fits, every attn_norm and attn_gate mode
#   session.log    everything else the steps printed
#   runs.tar.gz    the config/shakespeare_char/{softmax,softmax1,symax}.py runs' metrics.jsonl, and
#                  study/study_gpu/ (report and plots) when config/study_gpu.py exists and time was left for it
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

printf '# GPU session %s\n\n- commit: %s%s\n- steps: %s; budget %ss%s\n\n| step | status | seconds | command |\n|---|---|---:|---|\n' \
    "$(date -Is)" "$(git rev-parse --short HEAD 2>/dev/null)" "$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')" \
    "${steps[*]}" "$budget" "$([ "$dry" = 1 ] && echo '; DRY RUN on CPU at tiny sizes')" > "$summary"

left() { echo $(( budget - SECONDS )); }

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
    printf '| %s | %s | %s | `%s` |\n' "$name" "$status" "$(( SECONDS - t0 ))" "$*" >> "$summary"
}

finish() {
    printf '\n%s\n' "- outputs: $(cd "$OUT" && ls | tr '\n' ' ')" >> "$summary"
    echo
    cat "$summary"
}

if ! python -c "import torch, triton" >> "$log" 2>&1; then
    echo "| preflight | failed: python cannot import torch and triton (nothing is installed here) | 0 | |" >> "$summary"
    finish
    exit 1
fi
if [ "$dry" = 1 ]; then
    device=(--device=cpu)
    tests_cuda=(python -m pytest -q -x -m cuda tests/test_kernels.py)
    tests_rest=(python -m pytest -q -m "not cuda" tests/test_benchmarks.py tests/test_perplexity_cli.py)
    attention=(--dtype float32 --T 32 --d 8 --H 2 --reps 1)
    train=(config/shakespeare_char/cpu.py --n_layer=1 --n_head=2 --n_embd=16 --block_size=8 --compile=False
           --vocab_size 65 --iters 1 --warmup 0)
    shakespeare=(--device=cpu --dtype=float32 --compile=False --n_layer=1 --n_head=2 --n_embd=16 --block_size=16
                 --batch_size=2 --max_iters=2 --eval_interval=2 --eval_iters=1 --log_stats=False)
else
    if ! python -c "import torch; assert torch.cuda.is_available()" >> "$log" 2>&1; then
        echo "| preflight | failed: torch sees no CUDA GPU (GPU_SESSION_DRY_RUN=1 tests this script on a CPU) | 0 | |" >> "$summary"
        finish
        exit 1
    fi
    device=()
    tests_cuda=(python -m pytest -q -x -m cuda)
    tests_rest=(python -m pytest -q -m "not cuda")
    attention=(--dtype bfloat16 --d 64 128 --T 1024 2048 4096 8192)
    # Compiling dominates each row: one accumulation step and few iterations keep 13+ rows in the limit.
    train=(config/train_gpt2.py --block_size=1024 --dtype=bfloat16 --compile=True --gradient_accumulation_steps=1
           --max_batch_size 128 --iters 10 --warmup 3)
    shakespeare=()
fi

for step in "${steps[@]}"; do
    case $step in
        tests)
            run "pytest -m cuda" 90 "$OUT/tests.log" "${tests_cuda[@]}"
            run "pytest, the rest" 60 "$OUT/tests.log" "${tests_rest[@]}" ;;
        attention)
            run attention 120 "$log" python -m benchmarks.attention "${device[@]}" "${attention[@]}" --out "$OUT/attention.md" ;;
        train)
            run train 240 "$log" python -m benchmarks.train_throughput "${train[@]}" "${device[@]}" --batch_size=auto \
                --out "$OUT/train.md" ;;
        shakespeare)
            # Each run to completion, in an equal share of what is left; then the GPU study if it exists.
            share=$(( $(left) / 3 ))
            for norm in softmax softmax1 symax; do
                run "shakespeare_char $norm" "$share" "$log" ./run_training.sh "config/shakespeare_char/$norm.py" \
                    "${shakespeare[@]}" "--out_dir=$runs/shakespeare_char-$norm"
            done
            if [ -f config/study_gpu.py ] && [ "$dry" != 1 ]; then
                run "study_gpu" "$(left)" "$log" ./run_study.sh config/study_gpu.py
            fi
            (cd "$runs" && find . -name metrics.jsonl) > "$runs/files"
            [ -d study/study_gpu ] && cp -r study/study_gpu "$runs/"
            tar czf "$OUT/runs.tar.gz" -C "$runs" -T "$runs/files" $( [ -d "$runs/study_gpu" ] && echo study_gpu ) ;;
        *)
            echo "unknown step '$step' (steps: tests attention train shakespeare)" | tee -a "$log"
            printf '| %s | unknown step | 0 | |\n' "$step" >> "$summary" ;;
    esac
done
finish
