# Scripts that run a local cluster (scripts/test-cluster) run it in a private network and mount
# namespace of their own: the bridge, the pod namespaces and the LoadBalancer addresses exist only
# there. So two runs on one machine never meet, test traffic has no route to any other address,
# and whatever a failed run leaves behind goes away with the namespace. The namespace has no route
# out either: build everything that needs the network (cargo, go, helm) before calling this.
# shellcheck shell=bash

# in_private_network SCRIPT [ARGS...]: re-executes SCRIPT in a fresh network and mount namespace
# (loopback up, a private /run/netns for `ip netns`, and /sys remounted so that it shows this
# namespace's links), unless it already runs in one.
in_private_network() {
    [ -n "${PORTCULLIS_PRIVATE_NET:-}" ] && return 0
    if ! unshare -n -m true 2>/dev/null; then
        echo "$(basename "$1"): needs root, for a private network and mount namespace (unshare -n -m)" >&2
        exit 1
    fi
    exec unshare -n -m env PORTCULLIS_PRIVATE_NET=1 bash -c \
        'ip link set lo up && mkdir -p /run/netns && mount -t tmpfs netns /run/netns &&
        mount -t sysfs sysfs /sys && exec "$@"' _ "$@"
}
