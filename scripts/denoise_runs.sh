#!/usr/bin/env bash
# Start, or resume, the long denoiser runs of scripts/train_denoisers_full.py in the background, at
# the lowest CPU priority on one torch thread, each in its own folder under $RUNS (outside the
# repository). A run that is still going (its pid file names a live process of this run) is left
# alone; a finished one (final/ written) is skipped. Run it again in every session: the runs end
# with the session and go on from their last checkpoint.
#
#   scripts/denoise_runs.sh                       # staged-25 and foe-25 (the default)
#   scripts/denoise_runs.sh staged:15 staged:50   # others, MODEL:SIGMA
#   scripts/denoise_runs.sh staged:15:from25      # a joint-phase fine-tune (600 steps) of staged-sigma25/final
#   scripts/denoise_runs.sh foe:50:from25         # foe-sigma25/final's prior with the data weight for sigma 50
#   DEVICE=cuda scripts/denoise_runs.sh staged:25 # on a GPU machine
#   scripts/denoise_runs.sh --status              # last progress line and validation of each run
#   EXPORT=energycrf/pretrained scripts/denoise_runs.sh staged:25 staged:15:from25   # ship finished runs
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-/work/runs/denoise}
DEVICE=${DEVICE:-cpu}
if [[ ${1:-} == --status ]]; then
    for dir in "$RUNS"/*/; do
        [[ -f $dir/run.json ]] || continue
        echo "== $dir $( [[ -d $dir/final ]] && echo finished)"
        grep -v '^{"validation"' "$dir/stdout.log" 2>/dev/null | tail -n 1 || true
        grep '^{"validation"' "$dir/stdout.log" 2>/dev/null | tail -n 1 || true
    done
    exit 0
fi
for spec in "${@:-staged:25 foe:25}"; do
    for item in $spec; do
        IFS=: read -r model sigma from <<< "$item"
        dir=$RUNS/$model-sigma$sigma
        extra=()
        if [[ -n ${from:-} ]]; then
            start=$RUNS/$model-sigma${from#from}/final
            [[ -d $start ]] || { echo "$dir: waits for $start"; continue; }
            if [[ $model == staged ]]; then
                extra=(--init "$start" --set greedy_steps=0 --set joint_steps=600)
            else  # the FoE prior as it is, its data weight rescaled to this sigma (no steps)
                extra=(--init "$start" --set steps=0)
            fi
        fi
        mkdir -p "$dir"
        if [[ -d $dir/final ]]; then
            if [[ -n ${EXPORT:-} ]]; then  # write the finished run's denoiser where the package ships it
                env OMP_NUM_THREADS=1 PYTHONPATH="$PWD" python scripts/train_denoisers_full.py --model "$model" \
                    --sigma "$sigma" --run-dir "$dir" --resume --no-progress "${extra[@]}" \
                    --export "$EXPORT/denoise-sigma$sigma/$model" > /dev/null
                echo "$dir: finished, exported to $EXPORT/denoise-sigma$sigma/$model"
            else
                echo "$dir: finished"
            fi
            continue
        fi
        if [[ -f $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null \
                && grep -q -- "$dir" "/proc/$(cat "$dir/pid")/cmdline" 2>/dev/null; then
            echo "$dir: running (pid $(cat "$dir/pid"))"; continue
        fi
        nohup nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH="$PWD" python scripts/train_denoisers_full.py \
            --model "$model" --sigma "$sigma" --run-dir "$dir" --device "$DEVICE" --resume --no-progress "${extra[@]}" \
            >> "$dir/stdout.log" 2>&1 &
        echo $! > "$dir/pid"
        echo "$dir: started (pid $!)"
    done
done
