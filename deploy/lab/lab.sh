#!/usr/bin/env bash
# Ferrule lab: a small virtual datacenter in network namespaces on one machine.
#
#   usage: lab.sh up | status | down | deps
#
#   up      build the topology, start the ToR daemons and one `ferrule daemon` per node, wait
#           until each answers, then print `status`. Idempotent: a second `up` re-uses what runs.
#   status  namespaces, links, daemons and backend servers alive, `ferrule show status` per node,
#           the ToRs' BGP view, and one request from the client to each service VIP. Exits 1 when a
#           daemon or server is dead, a node does not answer or a VIP request is not answered.
#   down    stop the daemons this script started (by the PIDs it recorded), delete the
#           namespaces, remove pinned bpffs state of node1/node2 (and be1/be2's tc_decap) and the
#           run dir.
#   deps    install the Debian packages the lab (and the integration tests) need.
#
# The ferrule binary is $FERRULE_BIN, else target/release/ferrule, else built with
# `cargo build --release -p ferrule` from the repository root. Run as root.
#
# Topology (each name is a namespace, each line a veth pair):
#
#                               fr-client
#                             /           \
#         fr-tor1 (FRR, AS 65000)          fr-tor2 (BIRD, AS 65001)
#                |            \          /            |
#                |              \      /              |
#                |              /      \              |
#         fr-node1 (AS 65101)                fr-node2 (AS 65102)     each runs `ferrule daemon`
#                |                                   |
#             fr-be1                              fr-be2             backend hosts (two TCP servers each)
#
# An interface is named after the namespace it leads to: in fr-node1, `tor1` faces fr-tor1; in
# fr-tor1, `node1` faces fr-node1; in fr-be1, `node1` faces fr-node1.
#
# Fabric links (ToR - node) are unnumbered and IPv6-only: no address but each end's IPv6
# link-local. Each side sends router advertisements and learns the other's link-local from them;
# BGP runs over link-local (FRR `neighbor nodeN interface`, BIRD dynamic BGP on the interface,
# Ferrule `interface = "torN"`), carries IPv4 routes with IPv6 next hops (RFC 8950), and BFD
# (100 ms x 3) watches every session.
#
# Address plan elsewhere. The ToR (towards a backend: the node) takes ::1 and the lower IPv4 address.
#
#   link              IPv6 prefix          lower / upper      IPv4         lower / upper
#   tor1 - client     2001:db8:f:c1::/64   tor ::1 cli  ::2   192.0.2.72/31  tor .72 cli  .73
#   tor2 - client     2001:db8:f:c2::/64   tor ::1 cli  ::2   192.0.2.74/31  tor .74 cli  .75
#   node1 - be1       fd00:be:1::/64       node ::1 be ::2    198.51.100.0/30 node .1 be .2
#   node2 - be2       fd00:be:2::/64       node ::1 be ::2    198.51.100.4/30 node .5 be .6
#
#   client address    192.0.2.100/32 on fr-client's lo: the source of its traffic to the VIPs, so
#                     answers find it through either ToR (each has a static route to it)
#   router ids        tor1 192.0.2.1, tor2 192.0.2.2, node1 192.0.2.11, node2 192.0.2.12
#   announced         node1 2001:db8:100::/64 and its backend link 198.51.100.0/30, node2
#                     2001:db8:101::/64 and 198.51.100.4/30 (the nodes' IPv4 source addresses
#                     live there: the fabric links have none); the service VIP while a backend is
#                     healthy; the ToRs send a default route
#   203.0.113.0/24    IPv4 service VIPs and egress addresses (later)
#
# The services (both nodes), each balanced (Maglev, the same table on both nodes) to both backends
# and health checked over TCP. Both ToRs learn each VIP from both nodes and spread flows over them
# (ECMP, L4 hash). Each backend answers a connection with one line, `beN answered for <address:port
# it saw>`, and closes it.
#   `web`      VIP 203.0.113.10:80/tcp in NAT mode, to 198.51.100.2:8080 and 198.51.100.6:8080; the
#              backend answers the node's own address on its backend link (the node's first
#              uplink), so the reply comes back through the node that translated the request.
#   `web-dsr`  VIP 203.0.113.11:80/tcp in DSR mode, to 198.51.100.2:80 and 198.51.100.6:80: the node
#              sends the client's packet in an IPIP tunnel to the backend (over the fabric when it
#              is the other node's), whose `ferrule decap` (tc_decap on its link to its node)
#              strips it; the backend holds the VIP on its loopback and answers the client
#              directly, from the VIP, through its own node.
#
# The ToRs peer with the nodes over link-local IPv6 sessions carrying IPv4 and IPv6 unicast
# (RFC 8950 next hops). Each node imports the default routes and the other node's prefixes.
#
# Everything the lab writes lives in /run/ferrule-lab (configs, logs, pid files, sockets); it
# never touches /etc/frr, /etc/bird or the system's FRR/BIRD services. All traffic stays between
# these namespaces, on documentation and ULA prefixes.

set -euo pipefail

RUN=/run/ferrule-lab
PIDS="$RUN/pids"
# The backends' servers are the lab's workload, not its infrastructure: recorded apart.
WORKLOADS="$RUN/workloads"
BPFFS_HOST=/sys/fs/bpf
# A second mount point of the host's bpffs. `ip netns exec` gives the daemon its own mount
# namespace with a fresh /sys, hiding /sys/fs/bpf; a bind mount outside /sys stays visible there,
# so `ferrule daemon --bpffs $BPFFS_LAB` pins into the host's bpffs and the pins outlive a
# daemon restart, as they would on a real node.
BPFFS_LAB="$RUN/bpffs"
FRR_LIBEXEC=/usr/lib/frr
READY_TRIES=60      # readiness polls, 0.5 s apart: at most 30 s per daemon
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/../.." && pwd)"

NAMESPACES=(fr-tor1 fr-tor2 fr-node1 fr-node2 fr-be1 fr-be2 fr-client)
NODES=(node1 node2)
SERVERS=(server-be1 server-be2 server-dsr-be1 server-dsr-be2)
CLIENT_ADDR=192.0.2.100
VIP=203.0.113.10
VIP_PORT=80
BACKEND_PORT=8080
VIP_DSR=203.0.113.11
DSR_PORT=80

log() { echo "lab: $*" >&2; }
die() { echo "lab: error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Dependencies

deps_missing() {
    local cmd
    for cmd in ip sysctl ping vtysh "$FRR_LIBEXEC/zebra" "$FRR_LIBEXEC/bgpd" bird birdc \
               gobgpd gobgp clang llc bpftool nft iperf3 ethtool; do
        if [[ "$cmd" == /* ]]; then
            [[ -x "$cmd" ]] || return 0
        else
            command -v "$cmd" >/dev/null 2>&1 || return 0
        fi
    done
    [[ -e /usr/include/bpf/bpf_helpers.h ]] || return 0
    return 1
}

install_deps() {
    if ! deps_missing; then
        return 0
    fi
    [[ $EUID -eq 0 ]] || die "missing tools and not root: run as root to install them"
    log "installing packages (apt-get)"
    # Installing frr or bird2 would start their system services. policy-rc.d answering 101
    # ("action forbidden") stops that during this install only; an existing one is left alone.
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -q || rc=$?
    if [[ $rc -eq 0 ]]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            iproute2 procps iputils-ping frr bird2 gobgpd clang llvm libbpf-dev bpftool \
            nftables iperf3 linux-libc-dev ethtool || rc=$?
    fi
    if [[ $made_policy -eq 1 ]]; then
        rm -f "$policy"
    fi
    [[ $rc -eq 0 ]] || die "apt-get failed (exit $rc)"
}

# ---------------------------------------------------------------------------------------------
# Processes: every daemon is started by this script, its PID kept in $PIDS/<name>.pid together
# with the program it must be, so `down` never signals a recycled PID. Backend servers
# (server-*) are kept the same way in $WORKLOADS.

record() {
    if [[ $1 == server-* ]]; then echo "$WORKLOADS/$1"; else echo "$PIDS/$1"; fi
}

pid_of() { [[ -f "$(record "$1").pid" ]] && cat "$(record "$1").pid"; }

# alive NAME: the recorded PID exists, is not a zombie, and its argv[0] is still the recorded
# program (so a recycled PID is never taken for ours).
alive() {
    local pid prog argv0 state
    pid="$(pid_of "$1")" || return 1
    prog="$(cat "$(record "$1").prog" 2>/dev/null)" || return 1
    [[ -n "$pid" && -r /proc/$pid/cmdline ]] || return 1
    state="$(sed 's/.*) \(.\).*/\1/' /proc/"$pid"/stat 2>/dev/null)" || return 1
    [[ $state != Z ]] || return 1
    argv0="$(tr '\0' '\n' </proc/"$pid"/cmdline | head -n 1)"
    [[ $argv0 == "$prog" ]]
}

# start NAME NS LOG PROGRAM ARGS...: runs PROGRAM inside NS in the background, detached from the
# terminal, all output to LOG. `ip netns exec` and `setsid` (not a process-group leader here)
# both exec in place, so $! is the daemon's own PID.
start() {
    local name=$1 ns=$2 logfile=$3
    shift 3
    setsid ip netns exec "$ns" "$@" </dev/null >>"$logfile" 2>&1 &
    local pid=$! i
    echo "$pid" >"$(record "$name").pid"
    echo "$1" >"$(record "$name").prog"
    # Until the two execs have happened, argv[0] is still bash's or setsid's: wait (bounded)
    # so `alive` does not mistake a starting daemon for a dead one.
    for ((i = 0; i < 100; i++)); do
        if alive "$name" || [[ ! -e /proc/$pid ]]; then
            break
        fi
        sleep 0.02
    done
}

# wait_ready NAME LOG CHECK...: polls CHECK (a command) until it succeeds, bounded; fails with
# the log tail if the daemon dies or never answers.
wait_ready() {
    local name=$1 logfile=$2 i
    shift 2
    for ((i = 0; i < READY_TRIES; i++)); do
        if ! alive "$name"; then
            sleep 0.2
            tail -n 30 "$logfile" >&2 || true
            die "$name exited during startup (log: $logfile)"
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    tail -n 30 "$logfile" >&2 || true
    die "$name not ready after $((READY_TRIES / 2)) s (log: $logfile; check: $*)"
}

# stop NAME: SIGTERM, up to 5 s, then SIGKILL; only if the PID is still our program.
stop() {
    local name=$1 pid i
    pid="$(pid_of "$name")" || return 0
    if alive "$name"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            alive "$name" || break
            sleep 0.1
        done
        if alive "$name"; then
            log "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # FRR leaves a per-PID crash-log directory behind.
    if [[ $name == tor1-* ]]; then
        rm -rf "/var/tmp/frr/${name#tor1-}.$pid"
    fi
    rm -f "$(record "$name").pid" "$(record "$name").prog"
}

# ---------------------------------------------------------------------------------------------
# Topology

ensure_ns() {
    local ns=$1
    [[ -e /run/netns/$ns ]] || ip netns add "$ns"
    ip -n "$ns" link set lo up
}

# ensure_veth NS_A IF_A NS_B IF_B: creates the pair once; turns DAD off (fresh veth ends cannot
# collide, and tentative addresses make BGP daemons back off) and brings both ends up.
ensure_veth() {
    local ns_a=$1 if_a=$2 ns_b=$3 if_b=$4
    if ! ip -n "$ns_a" link show "$if_a" >/dev/null 2>&1; then
        ip link add "$if_a" netns "$ns_a" type veth peer name "$if_b" netns "$ns_b"
    fi
    ip netns exec "$ns_a" sysctl -qw "net.ipv6.conf.$if_a.accept_dad=0"
    ip netns exec "$ns_b" sysctl -qw "net.ipv6.conf.$if_b.accept_dad=0"
    ip -n "$ns_a" link set "$if_a" up
    ip -n "$ns_b" link set "$if_b" up
}

# addr NS IF CIDR: `replace` makes a second `up` a no-op instead of an error.
addr() {
    local extra=()
    [[ $3 == *:* ]] && extra=(nodad)
    ip -n "$1" addr replace "$3" dev "$2" "${extra[@]}"
}

forwarding() {
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.forwarding=1
}

build_topology() {
    local ns
    for ns in "${NAMESPACES[@]}"; do
        ensure_ns "$ns"
    done
    for ns in fr-tor1 fr-tor2 fr-node1 fr-node2; do
        forwarding "$ns"
    done

    # ToR <-> node links: unnumbered, only the kernel's IPv6 link-local addresses.
    local n t
    for n in 1 2; do
        for t in 1 2; do
            ensure_veth "fr-node$n" "tor$t" "fr-tor$t" "node$n"
        done
    done

    # Client <-> ToRs, with an ECMP default route over both.
    for t in 1 2; do
        ensure_veth fr-client "tor$t" "fr-tor$t" client
        addr "fr-tor$t" client "2001:db8:f:c$t::1/64"
        addr fr-client "tor$t" "2001:db8:f:c$t::2/64"
        addr "fr-tor$t" client "192.0.2.$((70 + 2 * t))/31"
        addr fr-client "tor$t" "192.0.2.$((71 + 2 * t))/31"
    done
    ip -n fr-client -6 route replace default \
        nexthop via 2001:db8:f:c1::1 dev tor1 nexthop via 2001:db8:f:c2::1 dev tor2
    ip -n fr-client -4 route replace default \
        nexthop via 192.0.2.72 dev tor1 nexthop via 192.0.2.74 dev tor2
    # The client's own address for the VIPs, reachable through either ToR.
    addr fr-client lo "$CLIENT_ADDR/32"
    ip -n fr-client -4 route replace 203.0.113.0/24 src "$CLIENT_ADDR" \
        nexthop via 192.0.2.72 dev tor1 nexthop via 192.0.2.74 dev tor2
    for t in 1 2; do
        ip -n "fr-tor$t" -4 route replace "$CLIENT_ADDR/32" via "192.0.2.$((71 + 2 * t))" dev client
    done
    # Spread flows over ECMP next hops by their L4 ports, not only by addresses: one client
    # talking to one VIP would otherwise always take the same ToR and the same node.
    for ns in fr-client fr-tor1 fr-tor2; do
        ip netns exec "$ns" sysctl -qw net.ipv4.fib_multipath_hash_policy=1
        ip netns exec "$ns" sysctl -qw net.ipv6.fib_multipath_hash_policy=1
    done
    # Across a veth the ToR hashes with the client socket's own flow hash, which the kernel
    # re-rolls when a segment times out: a retransmission could then reach the other node, which
    # has no state for a NAT flow. Keep it for the connection's life, as a wire would.
    ip netns exec fr-client sysctl -qw net.core.txrehash=0

    # Node <-> backend host; the backend's default route points at its node.
    for n in 1 2; do
        ensure_veth "fr-node$n" "be$n" "fr-be$n" "node$n"
        addr "fr-node$n" "be$n" "fd00:be:$n::1/64"
        addr "fr-be$n" "node$n" "fd00:be:$n::2/64"
        addr "fr-node$n" "be$n" "198.51.100.$((4 * n - 3))/30"
        addr "fr-be$n" "node$n" "198.51.100.$((4 * n - 2))/30"
        ip -n "fr-be$n" -6 route replace default via "fd00:be:$n::1" dev "node$n"
        ip -n "fr-be$n" -4 route replace default via "198.51.100.$((4 * n - 3))" dev "node$n"
    done
    offloads
}

# The load balancer's XDP rewrites and forwards frames between veths, so the veth ends without
# the load balancer must behave like switches and hosts behind real NICs (tests/tests/lb_e2e.rs
# and lb_fabric.rs have the details):
# - The ToRs' ends of the node links get a pass-through XDP program. A node sends a frame back
#   out the interface it came in on (XDP_TX) when the route back goes through the same ToR, and
#   a veth delivers such frames at once only when it has an XDP program itself; without one they
#   wait until other traffic wakes the queue (seconds), and connections time out.
# - The backends' ends get GRO, which is enough for frames redirected to them from another
#   interface of the node.
# - TX checksum offload is off where traffic starts (client, backends): a locally sent TCP
#   segment leaves with a partial checksum that a frame rewritten by XDP no longer gets completed.
offloads() {
    local n t
    cat >"$RUN/xdp_pass.c" <<'EOF'
/* Written by deploy/lab/lab.sh: passes every frame, so that the veth it is attached to takes the
 * frames that XDP on its peer sends back (XDP_TX) at once. */
__attribute__((section("xdp"), used)) int xdp_pass(void *ctx) { return 2; /* XDP_PASS */ }
char _license[] __attribute__((section("license"), used)) = "GPL";
EOF
    clang -O2 -g -target bpf -c "$RUN/xdp_pass.c" -o "$RUN/xdp_pass.o"
    for n in 1 2; do
        for t in 1 2; do
            if ! ip -n "fr-tor$t" link show dev "node$n" | grep -q 'prog/xdp'; then
                ip -n "fr-tor$t" link set dev "node$n" xdpdrv obj "$RUN/xdp_pass.o" sec xdp
            fi
        done
        ethtool_k "fr-be$n" "node$n" gro on tx off
    done
    for t in 1 2; do
        ethtool_k fr-client "tor$t" tx off
    done
}

ethtool_k() {
    local ns=$1 ifname=$2
    shift 2
    ip netns exec "$ns" ethtool -K "$ifname" "$@" >/dev/null
}

# bpf_fib_lookup lets XDP forward only to resolved neighbours; before that the datapath hands
# packets to the stack, which drops a translated one as a martian. One ping to each next hop.
warm_neighbours() {
    local n t
    for n in 1 2; do
        for t in 1 2; do
            # The ToR's link-local is the next hop of every route through it, IPv4 ones included.
            ip netns exec "fr-node$n" ping -n -q -c 1 -W 1 "$(link_local "fr-tor$t" "node$n")%tor$t" >/dev/null || true
        done
        ip netns exec "fr-node$n" ping -n -q -c 1 -W 1 "198.51.100.$((4 * n - 2))" >/dev/null || true
    done
}

# link_local NS IF: the interface's IPv6 link-local address.
link_local() {
    ip -n "$1" -6 -o addr show dev "$2" scope link | awk '{ sub("/.*", "", $4); print $4; exit }'
}

# ---------------------------------------------------------------------------------------------
# ToR daemons

start_tor1_frr() {
    local dir=$RUN/tor1
    mkdir -p "$dir"
    # FRR daemons drop to user frr; their sockets and pid files go into this directory.
    chown frr:frr "$dir"
    chmod 750 "$dir"
    # Router advertisements on the fabric links, every 3 s: how the nodes find this ToR (FRR
    # would send them every 10 s for `neighbor IF interface` anyway).
    cat >"$dir/zebra.conf" <<EOF
hostname fr-tor1
interface node1
 ipv6 nd ra-interval 3
 no ipv6 nd suppress-ra
interface node2
 ipv6 nd ra-interval 3
 no ipv6 nd suppress-ra
EOF
    cat >"$dir/bfdd.conf" <<EOF
hostname fr-tor1
bfd
 profile fabric
  detect-multiplier 3
  receive-interval 100
  transmit-interval 100
 !
!
EOF
    cat >"$dir/bgpd.conf" <<EOF
frr defaults datacenter
hostname fr-tor1
!
router bgp 65000
 bgp router-id 192.0.2.1
 ! Lab fabric: exchange routes without route-maps (RFC 8212 would otherwise block eBGP).
 no bgp ebgp-requires-policy
 ! The nodes are in different ASes: their paths to a service VIP are still equal (ECMP).
 bgp bestpath as-path multipath-relax
 no bgp default ipv4-unicast
 ! Unnumbered: the peer is whoever answers on the interface, over IPv6 link-local.
 neighbor node1 interface remote-as 65101
 neighbor node1 description node1
 neighbor node1 bfd profile fabric
 neighbor node2 interface remote-as 65102
 neighbor node2 description node2
 neighbor node2 bfd profile fabric
 address-family ipv4 unicast
  neighbor node1 activate
  neighbor node1 default-originate
  neighbor node2 activate
  neighbor node2 default-originate
 exit-address-family
 address-family ipv6 unicast
  neighbor node1 activate
  neighbor node1 default-originate
  neighbor node2 activate
  neighbor node2 default-originate
 exit-address-family
!
EOF
    local daemon
    for daemon in zebra bfdd bgpd; do
        if alive "tor1-$daemon"; then
            log "fr-tor1: $daemon already running (pid $(pid_of "tor1-$daemon"))"
            continue
        fi
        log "fr-tor1: starting $daemon"
        # -P 0: no TCP vty; the unix sockets in $dir are the only way in.
        start "tor1-$daemon" fr-tor1 "$dir/$daemon.log" "$FRR_LIBEXEC/$daemon" \
            -f "$dir/$daemon.conf" -i "$dir/$daemon.pid" -z "$dir/zserv.api" \
            --vty_socket "$dir" -P 0 --log stdout
        wait_ready "tor1-$daemon" "$dir/$daemon.log" \
            ip netns exec fr-tor1 vtysh --vty_socket "$dir" -d "$daemon" -c "show version"
    done
    wait_ready tor1-bgpd "$dir/bgpd.log" \
        ip netns exec fr-tor1 vtysh --vty_socket "$dir" -c "show bgp summary"
}

start_tor2_bird() {
    local dir=$RUN/tor2
    mkdir -p "$dir"
    cat >"$dir/bird.conf" <<'EOF'
router id 192.0.2.2;
log stderr all;
protocol device { }
# Install what BGP learns into fr-tor2's kernel tables, so the ToR forwards to the nodes (the
# default routes below are for the nodes only).
# Equal paths (a VIP from both nodes) become one multipath route.
protocol kernel kernel4 { ipv4 { export where source = RTS_BGP; }; merge paths on; }
protocol kernel kernel6 { ipv6 { export where source = RTS_BGP; }; merge paths on; }
# The default routes the ToR offers the nodes.
protocol static defaults4 { ipv4; route 0.0.0.0/0 unreachable; }
protocol static defaults6 { ipv6; route ::/0 unreachable; }
# Unnumbered fabric links: router advertisements (so the nodes find this ToR's link-local) and
# BFD at 100 ms x 3 for every BGP session.
protocol radv { interface "node1", "node2" { max ra interval 4; min ra interval 3; }; }
protocol bfd { interface "node1", "node2" { interval 100 ms; multiplier 3; }; }
# eBGP needs explicit filters in BIRD (RFC 8212); the lab fabric passes everything. Each node
# connects from its link-local address: a dynamic neighbor on its interface (BIRD names the
# session dnode11, dnode21).
template bgp node {
  local as 65001;
  bfd on;
  connect delay time 1;
  error wait time 1, 5;
  ipv6 { import all; export all; };
  ipv4 { import all; export all; extended next hop on; };
}
protocol bgp node1 from node { neighbor range fe80::/10 as 65101; interface "node1"; dynamic name "dnode1"; }
protocol bgp node2 from node { neighbor range fe80::/10 as 65102; interface "node2"; dynamic name "dnode2"; }
EOF
    if alive tor2-bird; then
        log "fr-tor2: bird already running (pid $(pid_of tor2-bird))"
        return 0
    fi
    log "fr-tor2: starting bird"
    start tor2-bird fr-tor2 "$dir/bird.log" bird -f -c "$dir/bird.conf" -s "$dir/bird.ctl"
    wait_ready tor2-bird "$dir/bird.log" bird_up
}

bird_up() {
    ip netns exec fr-tor2 birdc -s "$RUN/tor2/bird.ctl" show status | grep -q "Daemon is up and running"
}

# ---------------------------------------------------------------------------------------------
# Ferrule on the nodes

find_ferrule() {
    if [[ -n "${FERRULE_BIN:-}" ]]; then
        [[ -x "$FERRULE_BIN" ]] || die "FERRULE_BIN=$FERRULE_BIN is not an executable"
        FERRULE="$(cd "$(dirname "$FERRULE_BIN")" && pwd)/$(basename "$FERRULE_BIN")"
    elif [[ -x "$REPO_ROOT/target/release/ferrule" ]]; then
        FERRULE="$REPO_ROOT/target/release/ferrule"
    else
        log "building ferrule (cargo build --release -p ferrule)"
        (cd "$REPO_ROOT" && cargo build --release -p ferrule) >&2
        FERRULE="$REPO_ROOT/target/release/ferrule"
    fi
}

# The host's bpffs (mounted at its standard place when absent) and the bind mount described at
# BPFFS_LAB; `down` removes the bind mount and the lab's pins, not the standard mount.
ensure_bpffs() {
    if ! mountpoint -q "$BPFFS_HOST"; then
        mount -t bpf bpf "$BPFFS_HOST"
    fi
    mkdir -p "$BPFFS_LAB"
    if ! mountpoint -q "$BPFFS_LAB"; then
        mount --bind "$BPFFS_HOST" "$BPFFS_LAB"
    fi
}

write_node_config() {
    local n=$1
    cat >"$RUN/node$n.toml" <<EOF
# Written by deploy/lab/lab.sh for fr-node$n.
[node]
name = "node$n"
asn = $((65100 + n))
router_id = "192.0.2.$((10 + n))"
# The backend link first: its address is the node's own for the load balancer (NAT source).
uplinks = ["be$n", "tor1", "tor2"]

# Both ToRs, unnumbered (found by their router advertisements) with BFD: the default route,
# and the other node's prefixes.
[[bgp.peers]]
interface = "tor1"
asn = 65000
import = ["0.0.0.0/0", "::/0", "2001:db8:100::/63 le 64", "198.51.100.0/29 le 30"]
bfd = { interval_ms = 100, multiplier = 3 }
graceful_restart = { restart_time_s = 120 }

[[bgp.peers]]
interface = "tor2"
asn = 65001
import = ["0.0.0.0/0", "::/0", "2001:db8:100::/63 le 64", "198.51.100.0/29 le 30"]
bfd = { interval_ms = 100, multiplier = 3 }
graceful_restart = { restart_time_s = 120 }

[[bgp.announce]]
prefix = "2001:db8:$((99 + n))::/64"
communities = ["$((65100 + n)):100"]

[[bgp.announce]]
prefix = "198.51.100.$((4 * (n - 1)))/30"
communities = ["$((65100 + n)):100"]


[[services]]
name = "web"
vip = "$VIP"
port = $VIP_PORT
protocol = "tcp"
mode = "nat"
announce = "healthy"
health = { kind = "tcp", interval_ms = 500, timeout_ms = 500, rise = 2, fall = 2 }
backends = [ { address = "198.51.100.2", port = $BACKEND_PORT }, { address = "198.51.100.6", port = $BACKEND_PORT } ]

[[services]]
name = "web-dsr"
vip = "$VIP_DSR"
port = $DSR_PORT
protocol = "tcp"
mode = "dsr"
announce = "healthy"
health = { kind = "tcp", interval_ms = 500, timeout_ms = 500, rise = 2, fall = 2 }
backends = [ { address = "198.51.100.2", port = $DSR_PORT }, { address = "198.51.100.6", port = $DSR_PORT } ]
EOF
}

node_status() {
    "$FERRULE" show status --socket "$RUN/$1.sock" "${@:2}"
}

start_node() {
    local node=$1 n=${1#node}
    write_node_config "$n"
    mkdir -p "$RUN/$node"
    if alive "$node"; then
        log "fr-$node: ferrule already running (pid $(pid_of "$node"))"
        return 0
    fi
    local extra=()
    if "$FERRULE" daemon --help 2>/dev/null | grep -q -- --bpffs; then
        extra=(--bpffs "$BPFFS_LAB")
    fi
    log "fr-$node: starting ferrule daemon"
    rm -f "$RUN/$node.sock"
    start "$node" "fr-$node" "$RUN/$node.log" "$FERRULE" daemon \
        --config "$RUN/$node.toml" --state "$RUN/$node/state.redb" --socket "$RUN/$node.sock" \
        --metrics-listen 127.0.0.1:9641 --log-format text "${extra[@]}"
    wait_ready "$node" "$RUN/$node.log" node_status "$node"
}

# ---------------------------------------------------------------------------------------------
# Backend servers and the VIP

write_backend_server() {
    cat >"$RUN/backend-server.pl" <<'EOF'
# The lab's backend server: answers every connection with one line naming itself and the peer it
# sees (for NAT, the node's own address), then closes it. Written by deploy/lab/lab.sh.
use strict;
use warnings;
use IO::Socket::INET;

my ($addr, $port, $name) = @ARGV;
# Health checks connect and close without reading: writing to them must not kill us.
$SIG{PIPE} = 'IGNORE';
$| = 1;
my $server = IO::Socket::INET->new(
    LocalAddr => $addr, LocalPort => $port, Proto => 'tcp', Listen => 64, ReuseAddr => 1,
) or die "$name: cannot listen on $addr:$port: $!\n";
print "$name: listening on $addr:$port\n";
while (1) {
    my $conn = $server->accept or next;
    my $peer = ($conn->peerhost // '?') . ':' . ($conn->peerport // '?');
    print $conn "$name answered for $peer\n";
    close $conn;
}
EOF
}

start_backend_server() {
    local n=$1 name=server-be$1 addr=198.51.100.$((4 * $1 - 2))
    if alive "$name"; then
        log "fr-be$n: server already running (pid $(pid_of "$name"))"
        return 0
    fi
    log "fr-be$n: starting the backend server on $addr:$BACKEND_PORT"
    # perl is in every Debian system (perl-base is essential), IO::Socket::INET with it.
    start "$name" "fr-be$n" "$RUN/be$n.log" perl "$RUN/backend-server.pl" "$addr" "$BACKEND_PORT" "be$n"
    wait_ready "$name" "$RUN/be$n.log" server_listens "$n"
}

server_listens() {
    ip netns exec "fr-be$1" ss -Hltn "sport = :${2:-$BACKEND_PORT}" | grep -q LISTEN
}

# A DSR backend: the VIP on its loopback, a server on every address (the VIP for clients, its own
# for the nodes' health checks), and tc_decap on its link to its node, installed with `ferrule
# decap` (pinned in the host's bpffs through BPFFS_LAB, as the nodes' state is). Idempotent.
start_dsr_backend() {
    local n=$1 name=server-dsr-be$1 addr=198.51.100.$((4 * $1 - 2))
    ip -n "fr-be$n" addr replace "$VIP_DSR/32" dev lo
    log "fr-be$n: ferrule decap on node$n for tunnels to $addr"
    ip netns exec "fr-be$n" "$FERRULE" decap attach --interface "node$n" --address "$addr" \
        --name "be$n" --bpffs "$BPFFS_LAB" >/dev/null
    if alive "$name"; then
        log "fr-be$n: DSR server already running (pid $(pid_of "$name"))"
        return 0
    fi
    log "fr-be$n: starting the DSR backend server on *:$DSR_PORT"
    start "$name" "fr-be$n" "$RUN/dsr-be$n.log" perl "$RUN/backend-server.pl" 0.0.0.0 "$DSR_PORT" "be$n"
    wait_ready "$name" "$RUN/dsr-be$n.log" server_listens "$n" "$DSR_PORT"
}

# vip_request: one TCP connection from fr-client to the VIP, printing the backend's answer line.
# Bounded: 5 s for connect and answer.
vip_request() {
    local vip=${1:-$VIP} port=${2:-$VIP_PORT}
    ip netns exec fr-client timeout 5 bash -c \
        "exec 3<>/dev/tcp/$vip/$port && head -n 1 <&3" 2>/dev/null | grep answered
}

# wait_vip: until the VIP answers (both nodes announce it once a backend is healthy). Bounded.
wait_vip() {
    local vip=${1:-$VIP} port=${2:-$VIP_PORT} i
    for ((i = 0; i < READY_TRIES; i++)); do
        if vip_request "$vip" "$port" >/dev/null; then
            return 0
        fi
        sleep 0.5
    done
    die "the VIP $vip:$port did not answer the client within $((READY_TRIES / 2)) s"
}

# ---------------------------------------------------------------------------------------------
# Commands

cmd_up() {
    [[ $EUID -eq 0 ]] || die "lab.sh up needs root (namespaces, veth, bpffs)"
    install_deps
    find_ferrule
    mkdir -p "$RUN" "$PIDS" "$WORKLOADS"
    chmod 755 "$RUN"
    build_topology
    warm_neighbours
    write_backend_server
    local n
    ensure_bpffs
    for n in 1 2; do
        start_backend_server "$n"
        start_dsr_backend "$n"
    done
    start_tor1_frr
    start_tor2_bird
    local node
    for node in "${NODES[@]}"; do
        start_node "$node"
    done
    wait_vip "$VIP" "$VIP_PORT"
    wait_vip "$VIP_DSR" "$DSR_PORT"
    log "up: done"
    cmd_status
}

cmd_status() {
    local ok=0 ns name vip
    if [[ ! -d $RUN ]]; then
        echo "lab is down ($RUN does not exist)"
        return 1
    fi
    [[ -n "${FERRULE:-}" ]] || find_ferrule_quiet
    echo "== namespaces"
    for ns in "${NAMESPACES[@]}"; do
        if [[ -e /run/netns/$ns ]]; then echo "  $ns"; else echo "  $ns MISSING"; ok=1; fi
    done
    echo "== links"
    for ns in "${NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        ip -n "$ns" -br addr show | { grep -v '^lo ' || true; } | sed "s/^/  $ns: /"
    done
    echo "== daemons"
    for name in tor1-zebra tor1-bfdd tor1-bgpd tor2-bird "${NODES[@]}" "${SERVERS[@]}"; do
        if alive "$name"; then
            echo "  $name pid $(pid_of "$name") running"
        else
            echo "  $name NOT RUNNING"
            ok=1
        fi
    done
    for name in "${NODES[@]}"; do
        echo "== fr-$name: ferrule show status"
        if [[ -z "${FERRULE:-}" ]] || ! node_status "$name" 2>&1 | sed 's/^/  /'; then
            echo "  (no answer)"
            ok=1
        fi
    done
    for what in summary bfd; do
        for name in "${NODES[@]}"; do
            echo "== fr-$name: ferrule show bgp $what"
            if [[ -z "${FERRULE:-}" ]] || ! "$FERRULE" show bgp "$what" --socket "$RUN/$name.sock" 2>&1 | sed 's/^/  /'; then
                echo "  (no answer)"
                ok=1
            fi
        done
    done
    echo "== fr-tor1: vtysh show bfd peers brief"
    ip netns exec fr-tor1 vtysh --vty_socket "$RUN/tor1" -c "show bfd peers brief" 2>&1 \
        | sed 's/^/  /' || ok=1
    echo "== fr-tor1: vtysh show bgp summary"
    ip netns exec fr-tor1 vtysh --vty_socket "$RUN/tor1" -c "show bgp summary" 2>&1 \
        | sed 's/^/  /' || ok=1
    echo "== fr-tor1: vtysh show bgp ipv6 unicast / ipv4 unicast (the nodes' prefixes)"
    ip netns exec fr-tor1 vtysh --vty_socket "$RUN/tor1" -c "show bgp ipv6 unicast" \
        -c "show bgp ipv4 unicast" 2>&1 | sed 's/^/  /' || ok=1
    echo "== fr-tor2: birdc show protocols"
    ip netns exec fr-tor2 birdc -s "$RUN/tor2/bird.ctl" show protocols 2>&1 \
        | sed 's/^/  /' || ok=1
    # node1 / node2 are BIRD's listening templates; the sessions they accept are dnode11, dnode21, ...
    echo "== fr-tor2: birdc show route (the sessions node1 / node2 accepted: dnode1*, dnode2*)"
    for name in "${NODES[@]}"; do
        ip netns exec fr-tor2 birdc -s "$RUN/tor2/bird.ctl" "show route where proto ~ \"d${name}*\"" 2>&1 \
            | sed 's/^/  /' || ok=1
    done
    echo "== fr-tor1 / fr-tor2: kernel routes to the VIPs $VIP and $VIP_DSR (one next hop per node)"
    for name in fr-tor1 fr-tor2; do
        for vip in "$VIP" "$VIP_DSR"; do
            ip -n "$name" -4 route show exact "$vip/32" 2>&1 | sed "s/^/  $name: /" || ok=1
        done
    done
    local answer target vip port service
    for target in "$VIP $VIP_PORT web (NAT)" "$VIP_DSR $DSR_PORT web-dsr (DSR)"; do
        read -r vip port service <<<"$target"
        echo "== fr-client: one request to the VIP $vip:$port, $service"
        if answer="$(vip_request "$vip" "$port")"; then
            echo "  $answer"
        else
            echo "  (no answer)"
            ok=1
        fi
    done
    return $ok
}

# status must work without building anything: use whichever binary exists.
find_ferrule_quiet() {
    local candidate
    for candidate in "${FERRULE_BIN:-}" "$REPO_ROOT/target/release/ferrule" \
                     "$REPO_ROOT/target/debug/ferrule"; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            FERRULE=$candidate
            return 0
        fi
    done
}

cmd_down() {
    [[ $EUID -eq 0 ]] || die "lab.sh down needs root"
    local name ns
    # Nodes first (they peer with the ToRs), then bgpd before zebra.
    for name in "${NODES[@]}" tor2-bird tor1-bgpd tor1-bfdd tor1-zebra "${SERVERS[@]}"; do
        stop "$name"
    done
    for ns in "${NAMESPACES[@]}"; do
        if [[ -e /run/netns/$ns ]]; then
            local left
            left="$(ip netns pids "$ns" 2>/dev/null | tr '\n' ' ')"
            [[ -z "$left" ]] || log "$ns: processes not started by the lab remain: $left"
            ip netns delete "$ns"
        fi
    done
    # Pinned programs and maps outlive the daemon by design; the lab's are removed here (the
    # backends' tc_decap too: removing its link's pin detaches it).
    for name in "${NODES[@]}" be1 be2; do
        rm -rf "$BPFFS_HOST/ferrule/$name"
    done
    rmdir "$BPFFS_HOST/ferrule" 2>/dev/null || true
    if mountpoint -q "$BPFFS_LAB" 2>/dev/null; then
        umount "$BPFFS_LAB"
    fi
    # The bpffs at /sys/fs/bpf itself stays mounted even if `up` mounted it: it is the system's
    # standard mount (systemd makes it at boot), and tests or daemons outside the lab may be
    # using it right now.
    rm -rf "$RUN"
    log "down: done"
}

case "${1:-}" in
    up) cmd_up ;;
    status) cmd_status ;;
    down) cmd_down ;;
    deps) install_deps ;;
    *)
        echo "usage: $0 up | status | down | deps" >&2
        exit 2
        ;;
esac
