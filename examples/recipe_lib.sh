# Shared by the examples' run.sh scripts (sourced, from the repo root, with DATA and OUT set).

require_data() {  # require_data FILE...: each under $DATA, or exit 2 naming the one missing
    local f
    for f in "$@"; do
        if [[ ! -f "$DATA/$f" ]]; then
            echo "missing $DATA/$f: this recipe needs the shared data dir beside the repo (../shared/data)" >&2
            exit 2
        fi
    done
}

require_executable() {  # require_executable PATH: or exit 2 asking for `make venv`
    if [[ ! -x $1 ]]; then
        echo "no $1: run 'make venv' first" >&2
        exit 2
    fi
}

stage() {  # stage NAME COMMAND...: run it and append its wall and CPU time to $OUT/times.tsv
    local name=$1
    shift
    echo "== $name: $*"
    # bash's `time` reports on the group's stderr (the file); the command's own stderr goes to fd 3, the console.
    local TIMEFORMAT="$name	wall %0Rs	cpu %0Us user + %0Ss sys"
    { time "$@" 2>&3; } 3>&2 2>>"$OUT/times.tsv"
    tail -n 1 "$OUT/times.tsv"
}
