#!/usr/bin/env bash
# Start, or resume, the long denoiser runs of scripts/train_denoisers_full.py in the background, at
# the lowest CPU priority on one torch thread, each in its own folder under $RUNS (outside the
# repository). A run that is still going (its pid file names a live process of this run) is left
# alone; a finished one (final/ written) is skipped. Run it again in every session: the runs end
# with the session and go on from their last checkpoint.
#
#   scripts/denoise_runs.sh                       # staged-25 and foe-25 (the default, with no arguments only)
#   scripts/denoise_runs.sh staged:15 staged:50   # others, MODEL:SIGMA (staged or foe; sigma > 0)
#   scripts/denoise_runs.sh staged:15:from25      # a joint-phase fine-tune (600 steps) of staged-sigma25/final
#   scripts/denoise_runs.sh foe:50:from25         # foe-sigma25/final's prior with the data weight for sigma 50
#   DEVICE=cuda scripts/denoise_runs.sh staged:25 # on a GPU machine
#   scripts/denoise_runs.sh --status              # state, last progress line and validation of each run
#   EXPORT=energycrf/pretrained scripts/denoise_runs.sh staged:25 staged:15:from25   # ship finished runs
#
# Every spec is checked before any run starts (a bad or empty one: one line, exit status 2). A
# sigma is a number in any spelling, written as its shortest one (25.0 and 025 are 25: the folder
# staged-sigma25). A fromSIGMA run needs the other run's final/ only until it has a checkpoint. A
# run is "started" once the training script has checked its settings; one that exits at once (e.g.
# other settings than its run.json's) is reported with its error, and the exit status is its own.
# RUNS, EXPORT and a PYTHON path are relative to the caller's working directory.
set -euo pipefail
here() {  # a path against the caller's folder ('' stays '')
    [[ -z $1 || $1 == /* ]] && printf '%s\n' "$1" || printf '%s\n' "$PWD/$1"
}
RUNS=$(here "${RUNS:-/work/runs/denoise}")
EXPORT=$(here "${EXPORT:-}")
PYTHON=${PYTHON:-python}
[[ $PYTHON != */* ]] || PYTHON=$(here "$PYTHON")
DEVICE=${DEVICE:-cpu}
cd "$(dirname "$0")/.."
me=$(basename "$0")

alive() {  # the run in folder $1 has a live process (its pid file names a process of this run)
    [[ -f $1/pid ]] && kill -0 "$(cat "$1/pid")" 2>/dev/null \
        && grep -q -- "$1" "/proc/$(cat "$1/pid")/cmdline" 2>/dev/null
}
last_line() {  # the last non-empty line of file $1 ('' when there is none)
    grep -v '^[[:space:]]*$' "$1" 2>/dev/null | tail -n 1 || true
}
has_checkpoint() {  # the run in folder $1 has a checkpoint of some phase
    local f
    for f in "$1"/*/latest; do [[ -f $f ]] && return 0; done
    return 1
}
shortest() {  # a sigma's shortest spelling: 025.50 -> 25.5, 25.0 -> 25, .5 -> 0.5
    local int=${1%%.*} frac=
    [[ $1 != *.* ]] || frac=${1#*.}
    while [[ $int == 0* ]]; do int=${int#0}; done
    while [[ $frac == *0 ]]; do frac=${frac%0}; done
    echo "${int:-0}${frac:+.$frac}"
}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | cut -c3-
    exit 0
fi
if [[ ${1:-} == --status ]]; then
    if [[ ! -d $RUNS ]]; then
        echo "$me: error: RUNS: expected a folder of runs, got '$RUNS' (no such folder)" >&2
        exit 2
    fi
    # every run folder with a run.json, also those started directly with train_denoisers_full.py
    found=0
    for dir in "$RUNS"/*/; do
        dir=${dir%/}
        [[ -f $dir/run.json ]] || continue
        found=1
        last=$(last_line "$dir/stdout.log")
        if [[ -d $dir/final ]]; then state=finished
        elif alive "$dir"; then state="running (pid $(cat "$dir/pid"))"
        elif [[ $last == '{"stopped"'* ]]; then state="stopped (the same command resumes it)"
        elif [[ -n $last && $last != '{'* ]]; then state="not running, its last output: $last"
        else state="not running"
        fi
        echo "== $dir: $state"
        # the last step line of stdout.log, else the last record of the newest phase's log.jsonl
        line=$(grep '"s_per_step"' "$dir/stdout.log" 2>/dev/null | tail -n 1 || true)
        newest=$(ls -t "$dir"/*/log.jsonl 2>/dev/null | head -n 1 || true)
        if [[ -z $line && -n $newest ]]; then
            line="$(basename "$(dirname "$newest")")/log.jsonl: $(last_line "$newest")"
        fi
        echo "progress: ${line:-none yet}"
        line=$(last_line "$dir/validation.jsonl")
        echo "validation: ${line:-none yet}"
    done
    (( found )) || echo "no runs in $RUNS"
    exit 0
fi

# MODEL:SIGMA[:fromSIGMA], checked before anything starts; only no arguments at all means the default
number='(0*[1-9][0-9]*([.][0-9]+)?|0*[.][0-9]*[1-9][0-9]*)'  # > 0
bad_spec() {
    echo "$me: error: run spec: expected $1, got '$2'" >&2
    exit 2
}
specs=("$@")
(( $# )) || specs=(staged:25 foe:25)
items=()
for spec in "${specs[@]}"; do
    IFS=$' \t\n' read -r -d '' -a words <<< "$spec" || true  # every line of it, not the first only
    (( ${#words[@]} )) || bad_spec "MODEL:SIGMA or MODEL:SIGMA:fromSIGMA, not an empty spec" "$spec"
    for item in "${words[@]}"; do
        if [[ ! $item =~ ^(staged|foe):$number(:from$number)?$ ]]; then
            bad_spec "MODEL:SIGMA or MODEL:SIGMA:fromSIGMA (MODEL staged or foe, SIGMA a number > 0; 15, 25 and\
 50 are shipped)" "$item"
        fi
        IFS=: read -r model sigma from <<< "$item"
        sigma=$(shortest "$sigma")
        [[ -z $from ]] || from=from$(shortest "${from#from}")
        [[ ${from#from} != "$sigma" ]] || bad_spec "fromSIGMA of another sigma than the run's own" "$item"
        item=$model:$sigma${from:+:$from}
        [[ " ${items[*]} " == *" $item "* ]] || items+=("$item")  # 25 and 25.0 are the same run
    done
done

status=0
for item in "${items[@]}"; do
    IFS=: read -r model sigma from <<< "$item"
    dir=$RUNS/$model-sigma$sigma
    extra=()
    if [[ -n ${from:-} ]]; then
        start=$RUNS/$model-sigma${from#from}/final
        if [[ $model == staged ]]; then
            extra=(--set greedy_steps=0 --set joint_steps=600)
        else  # the FoE prior as it is, its data weight rescaled to this sigma (no steps)
            extra=(--set steps=0)
        fi
        if [[ -d $start ]]; then
            extra+=(--init "$start")
        elif ! has_checkpoint "$dir"; then  # its start is needed: to begin, or to export a run of no steps
            if [[ ! -d $dir/final ]]; then
                echo "$dir: waits for $start"; continue
            elif [[ -n $EXPORT ]]; then
                echo "$dir: finished, not exported: a run of no steps is rebuilt from its start, $start" >&2
                status=1; continue
            fi
        fi
    fi
    mkdir -p "$dir"
    if [[ -d $dir/final ]]; then
        if [[ -n $EXPORT ]]; then  # write the finished run's denoiser where the package ships it
            env OMP_NUM_THREADS=1 PYTHONPATH="$PWD" "$PYTHON" scripts/train_denoisers_full.py --model "$model" \
                --sigma "$sigma" --run-dir "$dir" --resume --no-progress "${extra[@]}" \
                --export "$EXPORT/denoise-sigma$sigma/$model" > /dev/null
            echo "$dir: finished, exported to $EXPORT/denoise-sigma$sigma/$model"
        else
            echo "$dir: finished"
        fi
        continue
    fi
    if alive "$dir"; then
        echo "$dir: running (pid $(cat "$dir/pid"))"; continue
    fi
    touch "$dir/stdout.log"
    before=$(wc -l < "$dir/stdout.log")
    nohup nice -n 19 env OMP_NUM_THREADS=1 PYTHONPATH="$PWD" "$PYTHON" scripts/train_denoisers_full.py \
        --model "$model" --sigma "$sigma" --run-dir "$dir" --device "$DEVICE" --resume --no-progress "${extra[@]}" \
        >> "$dir/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" > "$dir/pid"
    # the script prints {"started": ..., "pid": N} once its settings are checked: wait for that or its end
    said_started() { tail -n +$((before + 1)) "$dir/stdout.log" | grep -F "\"pid\": $pid}" > /dev/null; }
    for ((i = 0; i < 1200; i++)); do
        said_started && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if said_started; then
        echo "$dir: started (pid $pid)"
    elif kill -0 "$pid" 2>/dev/null; then
        echo "$dir: started (pid $pid), still checking its settings: see $dir/stdout.log"
    else
        rc=0
        wait "$pid" || rc=$?
        rm -f "$dir/pid"
        echo "$dir: not started (exit status $rc): $(tail -n +$((before + 1)) "$dir/stdout.log" \
            | grep -v '^[[:space:]]*$' | tail -n 1)" >&2
        status=$rc
    fi
done
exit "$status"
