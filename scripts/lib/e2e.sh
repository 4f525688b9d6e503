# Shared helpers of the end-to-end scripts (sourced, not run). They expect `work` (a temp
# folder) and maintain `pids` (background processes killed on exit) and `passed`.
# shellcheck shell=bash

# How long to wait for something that should happen within a second or two (a server
# starting, a manifest edit going live): a bound against hangs, not a timing requirement.
patience_s=30
pids=()
passed=0

e2e_cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -eq 0 ]; then
        rm -rf "$work"
    else
        echo "$(basename "$0"): FAILED; files and logs kept in $work" >&2
        for log in "$work"/*.log; do
            [ -f "$log" ] || continue
            echo "--- last lines of $log ---" >&2
            tail -n 30 "$log" >&2
        done
    fi
}

fail() {
    echo "  FAIL: $*" >&2
    exit 1
}

ok() {
    passed=$((passed + 1))
    echo "  ok: $*"
}

# Whether something accepts TCP connections on 127.0.0.1:$1 or [::1]:$1.
listening() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || (exec 3<>"/dev/tcp/::1/$1") 2>/dev/null
}

wait_until() {
    local what=$1
    shift
    local deadline=$((SECONDS + patience_s))
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "gave up waiting ${patience_s}s: $what"
        sleep 0.2
    done
}

# A TCP port nobody listens on (random in 20000-29999).
free_port() {
    local candidate
    for _ in $(seq 1 100); do
        candidate=$((20000 + RANDOM % 10000))
        if ! listening "$candidate"; then
            echo "$candidate"
            return
        fi
    done
    fail "no free port"
}

# Runs curl with the given arguments, keeping stdout ($curl_out), stderr ($curl_err) and the
# exit code ($curl_status).
run_curl() {
    curl_out="$work/curl.out"
    curl_err="$work/curl.err"
    set +e
    # No progress meter: it shares stderr with -v's lines and can run into them.
    curl --no-progress-meter "$@" >"$curl_out" 2>"$curl_err"
    curl_status=$?
    set -e
}

# Builds the debug binary and sets `portcullis` to its path.
build_portcullis() {
    (cd "$root" && cargo build -p portcullis)
    portcullis="${CARGO_TARGET_DIR:-$root/target}/debug/portcullis"
    [ -x "$portcullis" ] || fail "no binary at $portcullis"
}
