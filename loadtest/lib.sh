# shellcheck shell=bash
# Shell helpers shared by the loadtest scripts (sourced; needs $ROOT).

# The in-memory ceiling bench: the server's share of one full AllowValidOnly handshake with the
# guide's RSA-2048 server key, by client key (the socket runs' --client-key).
# shellcheck disable=SC2034 # used by the scripts that source this
CEILING_BENCH_ECDSA_CLIENT="handshake/server/rsa2048_p256_client/valid_only/no_rules/full"
CEILING_BENCH_RSA_CLIENT="handshake/server/rsa2048/valid_only/no_rules/full"

# Expands a taskset list (0,2-4) into one CPU per line.
expand_cpus() {
  local part a b
  for part in ${1//,/ }; do
    if [[ "$part" == *-* ]]; then a="${part%-*}"; b="${part#*-}"; seq "$a" "$b"; else echo "$part"; fi
  done
}
join_cpus() { paste -sd, -; }

# The median of the numbers on stdin, one per line (0 when there are none).
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

cpu_model() { lscpu | sed -n 's/^Model name: *//p' | head -1; }

# The commit the measured binaries come from.
portcullis_commit() { echo "${PORTCULLIS_COMMIT:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)}"; }

# Prints the path of the handshake bench executable: $PORTCULLIS_BIN_DIR/handshake-bench when
# there is one (loadtest/pack-tools packs it for machines without cargo), else built in
# release with cargo (its output in $1).
handshake_bench_exe() {
  local build_log="$1" exe="${PORTCULLIS_BIN_DIR:-}/handshake-bench"
  if [ -z "${PORTCULLIS_BIN_DIR:-}" ] || [ ! -x "$exe" ]; then
    exe="$(cd "$ROOT" && cargo bench --quiet -p portcullis-benches --bench handshake --no-run \
      --message-format=json 2>"$build_log" |
      jq -r 'select(.reason == "compiler-artifact" and .target.name == "handshake") | .executable // empty' | tail -1)"
  fi
  [ -x "$exe" ] && echo "$exe"
}

# Prints a script's help: its header comment, from the second line to `set -e...`.
print_help() { sed -n '2,/^set -e/p' "$1" | sed '$d; s/^# \{0,1\}//'; }

# Waits up to 10 s until something listens on 127.0.0.1 port $1; after that, ends the script
# (from a command substitution too, where `set -e` would not).
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$(basename "$0"): nothing listens on port $1" >&2
  exit 1
}
