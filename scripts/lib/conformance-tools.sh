# Builds (once, cached in .tools/conformance/) the two Go programs of scripts/conformance.d:
# the upstream echo server `echo-basic` (a `tool` of that module; scripts/test-cluster maps the
# conformance suite's echo image to it) and the conformance suite test binary (`go test -c` of
# conformance_test.go; scripts/conformance runs it). Sourced by scripts/test-cluster and
# scripts/conformance; needs $ROOT (the repository root), log and die.
#
#   conformance_tools_echo_basic   prints the echo-basic path, building it if needed
#   conformance_tools_suite        prints the suite binary's path, building it if needed
#
# The folder's key covers the module files and this recipe; the suite binary's name adds a hash of
# the test source. So editing the test rebuilds only the suite binary, and never removes the
# echo-basic a running cluster's pods use. CONFORMANCE_TOOLS overrides the cache folder.
# shellcheck shell=bash

CONFORMANCE_MOD=$ROOT/scripts/conformance.d
CONFORMANCE_TOOLS=${CONFORMANCE_TOOLS:-$ROOT/.tools/conformance}
CONFORMANCE_RECIPE=1

conformance_tools_cache() {
    local version key
    version=$(awk '$1 == "sigs.k8s.io/gateway-api/conformance" { print $2; exit }' "$CONFORMANCE_MOD/go.mod")
    [[ -n $version ]] || die "cannot read the sigs.k8s.io/gateway-api/conformance version from $CONFORMANCE_MOD/go.mod"
    key=$({
        echo "recipe=$CONFORMANCE_RECIPE"
        cat "$CONFORMANCE_MOD/go.mod" "$CONFORMANCE_MOD/go.sum"
    } | sha256sum | cut -c1-12)
    echo "$CONFORMANCE_TOOLS/gateway-api-$version-$key"
}

# conformance_tools_build NAME SUBCOMMAND PACKAGE [FLAGS...]: builds $cache/NAME with
# `go SUBCOMMAND -trimpath -o FILE FLAGS... PACKAGE` in the module folder, under a lock; prints the path.
conformance_tools_build() {
    local name=$1 subcommand=$2 package=$3 cache out go tmp
    shift 3
    cache=$(conformance_tools_cache)
    out=$cache/$name
    if [[ ! -x $out ]]; then
        mkdir -p "$CONFORMANCE_TOOLS"
        (
            exec 7>"$CONFORMANCE_TOOLS/.build.lock"
            flock 7
            [[ -x $out ]] && exit 0
            go=$(command -v go || echo /usr/local/go/bin/go)
            [[ -x $go ]] || { log "Go (>= 1.26) is needed to build $name, and none was found on PATH"; exit 1; }
            log "building $name from ${CONFORMANCE_MOD#"$ROOT"/} (first use only; cached in ${cache#"$ROOT"/})"
            mkdir -p "$cache"
            tmp=$(mktemp "$cache/.$name.XXXXXX")
            (cd "$CONFORMANCE_MOD" && CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" \
                nice -n 10 "$go" "$subcommand" -trimpath -o "$tmp" "$@" "$package") || {
                rm -f "$tmp"
                exit 1
            }
            mv "$tmp" "$out"
            # Suite binaries of older test sources are dead weight.
            [[ $name == conformance-*.test ]] &&
                find "$cache" -maxdepth 1 -name 'conformance-*.test' ! -path "$out" -delete
            # Older builds (another version or recipe) are dead weight.
            find "$CONFORMANCE_TOOLS" -mindepth 1 -maxdepth 1 -type d -name 'gateway-api-*' ! -path "$cache" \
                -exec rm -rf {} +
        ) 7>&- || exit 1
    fi
    echo "$out"
}

conformance_tools_echo_basic() {
    conformance_tools_build echo-basic build sigs.k8s.io/gateway-api/conformance/echo-basic -ldflags "-s -w"
}

conformance_tools_suite() {
    local source
    source=$(cat "$CONFORMANCE_MOD"/*.go | sha256sum | cut -c1-12)
    conformance_tools_build "conformance-$source.test" test . -c
}
