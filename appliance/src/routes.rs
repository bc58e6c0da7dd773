//! Kernel routes for what BGP learned: keeps the main table's routes with protocol
//! [`RTPROT_FERRULE`] equal to the speaker's forwarding table ([`Speaker::fib`]), ECMP next
//! hops as one multipath route. `plan` is pure; `run` is the thin level-triggered loop over a
//! [`RouteTable`]. It never touches a route with another protocol id (the admin's, the kernel's,
//! another routing daemon's).
//!
//! [`Speaker::fib`]: ferrule_bgp::driver::Speaker::fib

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferrule_bgp::driver::{Fib, FibNextHop};
use ferrule_bgp::wire::Prefix;
use futures_util::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteProtocol, RouteScope, RouteType,
    RouteVia,
};
use rtnetlink::packet_route::AddressFamily;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// The routing protocol id Ferrule's kernel routes carry (`ip route show proto 233`). Unused by
/// iproute2's `rt_protos` list and by the routing daemons we know: BIRD's 12, zebra's 11, and
/// FRR's 186 to 198 (its staticd uses 196, which an earlier Ferrule took by mistake: on a host
/// with FRR, zebra would have treated our routes as its own). It marks which routes are ours to
/// change and to remove; `deploy/rt_protos.d/ferrule.conf` names it for `ip route`. Changing it
/// orphans the routes an older version installed, so it does not change again.
pub const RTPROT_FERRULE: u8 = 233;

/// The metric (priority) of Ferrule's routes, the same for both families. A route to the same
/// prefix with a lower metric (e.g. one an admin added) wins over ours; one with the same metric
/// that is not ours makes our add fail with "File exists", reported as such.
pub const ROUTE_METRIC: u32 = 20;

/// How often the installer re-reads the kernel even when the speaker changed nothing, so a
/// route deleted by hand comes back and one that failed to install is retried.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// One change to the kernel's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOp {
    /// No route of ours for the prefix: create one.
    Add(Prefix, Vec<FibNextHop>),
    /// Our route for the prefix has other next hops: replace it as a whole.
    Replace(Prefix, Vec<FibNextHop>),
    /// Our route for a prefix the speaker no longer wants.
    Delete(Prefix),
}

/// The ops that take the kernel's routes with our protocol id (`kernel`) to `desired`: deletes
/// first, then adds and replaces, each in prefix order. While `desired` is deferred (a graceful
/// restart converging), the routes kept from before the restart are left as they are, neither
/// deleted nor replaced (route selection waits for the peers' End-of-RIB, RFC 4724 4.1: one
/// ECMP leg re-learned first must not shrink a kept route to itself); only prefixes without a
/// route are added.
pub fn plan(desired: &Fib, kernel: &Fib) -> Vec<RouteOp> {
    let mut ops: Vec<RouteOp> = if desired.deferred() {
        Vec::new()
    } else {
        kernel.iter().filter(|(p, _)| desired.get(p).is_none()).map(|(p, _)| RouteOp::Delete(*p)).collect()
    };
    for (prefix, wanted) in desired.iter() {
        match kernel.get(prefix) {
            None => ops.push(RouteOp::Add(*prefix, wanted.to_vec())),
            Some(seen) if !desired.deferred() && !installed_as(wanted, seen) => {
                ops.push(RouteOp::Replace(*prefix, wanted.to_vec()))
            }
            Some(_) => {}
        }
    }
    ops
}

/// Whether the kernel's next hops `seen` are the desired `wanted`. The kernel reports an
/// interface for every next hop, including those we let it resolve (`ifindex: None`): those
/// match a kernel next hop with the same gateway on any interface.
fn installed_as(wanted: &[FibNextHop], seen: &[FibNextHop]) -> bool {
    if wanted.len() != seen.len() {
        return false;
    }
    let mut left: Vec<&FibNextHop> = seen.iter().collect();
    // Exact ones first, so a wildcard cannot take the kernel next hop an exact one needs.
    let (exact, any_interface): (Vec<&FibNextHop>, Vec<&FibNextHop>) = wanted.iter().partition(|h| h.ifindex.is_some());
    for hop in exact.into_iter().chain(any_interface) {
        let found =
            left.iter().position(|s| s.gateway == hop.gateway && (hop.ifindex.is_none() || s.ifindex == hop.ifindex));
        match found {
            Some(i) => {
                left.swap_remove(i);
            }
            None => return false,
        }
    }
    true
}

/// The kernel's routing table as the installer sees it: our routes only.
pub trait RouteTable: Send {
    /// Every route in the main table with protocol [`RTPROT_FERRULE`] and metric
    /// [`ROUTE_METRIC`].
    fn routes(&mut self) -> impl Future<Output = Result<Fib>> + Send;
    fn apply(&mut self, op: &RouteOp) -> impl Future<Output = Result<()>> + Send;
    /// The interfaces that are up (administratively: the kernel refuses a whole multipath route
    /// for one next hop on an interface that is not, and takes one without carrier, marked
    /// linkdown). Read once per pass, when a route failed.
    fn interfaces_up(&self) -> std::collections::BTreeSet<u32>;
}

/// Reads the kernel's routes, plans and applies. Every op is tried; the first error (with the
/// count of the others) is returned, and the next pass retries what failed.
pub async fn sync(desired: &Fib, table: &mut impl RouteTable) -> Result<usize> {
    let kernel = table.routes().await.context("reading the kernel's routes")?;
    let ops = plan(desired, &kernel);
    let mut errors = Vec::new();
    // Per-route lines at debug level: a table load changes thousands of routes, and formatting a
    // log line for each would cost more than the netlink work.
    let (mut added, mut replaced, mut removed, mut partial) = (0, 0, 0, 0);
    let mut up: Option<std::collections::BTreeSet<u32>> = None;
    for op in &ops {
        let result = match table.apply(op).await {
            // One next hop on a link that is down (a session not yet timed out, no BFD) makes the
            // kernel refuse the whole ECMP route: install the usable ones rather than nothing.
            // The next pass tries the whole set again.
            // (A hop the kernel resolves by itself, without an interface, is taken as usable.)
            Err(err) => match op {
                RouteOp::Add(prefix, hops) | RouteOp::Replace(prefix, hops) if hops.len() > 1 => {
                    let up = up.get_or_insert_with(|| table.interfaces_up());
                    let usable: Vec<FibNextHop> =
                        hops.iter().filter(|h| h.ifindex.is_none_or(|i| up.contains(&i))).cloned().collect();
                    // The same kind of op: an add that found another route in place must not
                    // replace it.
                    let fallback = match op {
                        RouteOp::Add(..) => RouteOp::Add(*prefix, usable.clone()),
                        _ => RouteOp::Replace(*prefix, usable.clone()),
                    };
                    if usable.is_empty() || usable.len() == hops.len() {
                        Err(err)
                    } else if table.apply(&fallback).await.is_ok() {
                        partial += 1;
                        debug!(%prefix, next_hops = %list(&usable), wanted = %list(hops), "kernel route installed with the next hops whose interface is up");
                        continue;
                    } else {
                        Err(err)
                    }
                }
                _ => Err(err),
            },
            ok => ok,
        };
        match result {
            Ok(()) => match op {
                RouteOp::Add(prefix, hops) => {
                    added += 1;
                    debug!(%prefix, next_hops = %list(hops), "kernel route added")
                }
                RouteOp::Replace(prefix, hops) => {
                    replaced += 1;
                    debug!(%prefix, next_hops = %list(hops), "kernel route replaced")
                }
                RouteOp::Delete(prefix) => {
                    removed += 1;
                    debug!(%prefix, "kernel route removed")
                }
            },
            Err(err) => errors.push(err),
        }
    }
    if added + replaced + removed > 0 {
        info!(added, replaced, removed, "kernel routes changed");
    }
    if partial > 0 {
        info!(routes = partial, "kernel routes installed without their next hops on interfaces that are down");
    }
    if let Some(first) = errors.first() {
        bail!("{} of {} kernel route changes failed, the first: {first:#}", errors.len(), ops.len());
    }
    Ok(ops.len())
}

fn list(hops: &[FibNextHop]) -> String {
    hops.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The first retry after a failed pass (then doubling up to [`RESYNC_INTERVAL`]).
const RETRY_FIRST: Duration = Duration::from_millis(200);

/// How long the installer lets a burst of forwarding-table changes settle before a pass.
const SETTLE: Duration = Duration::from_millis(100);

/// The installer task: on every forwarding-table change from the speaker, and every
/// [`RESYNC_INTERVAL`], makes the kernel match. Ends when `stop` turns true (or the speaker is
/// gone) and hands the table back, for [`flush_on_shutdown`].
pub async fn run<T: RouteTable>(
    mut fib: watch::Receiver<Arc<Fib>>,
    mut table: T,
    mut stop: watch::Receiver<bool>,
) -> T {
    let mut tick = tokio::time::interval(RESYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    // After a failed pass, retry soon (doubling up to the resync interval) rather than leave a
    // failover half-done until the next tick.
    let mut retry = RETRY_FIRST;
    loop {
        // Drop the snapshot before waiting: while we hold it, each speaker update copies it.
        let desired = fib.borrow_and_update().clone();
        match sync(&desired, &mut table).await {
            Ok(n) => {
                if failing {
                    info!(routes = desired.len(), "kernel routes in sync again");
                }
                failing = false;
                retry = RETRY_FIRST;
                debug!(routes = desired.len(), changes = n, "kernel routes in sync");
            }
            Err(err) => {
                failing = true;
                warn!(error = %format!("{err:#}"), retry_ms = retry.as_millis() as u64, "kernel routes not in sync; retrying");
            }
        }
        drop(desired);
        let last_pass = tokio::time::Instant::now();
        let changed = tokio::select! {
            changed = fib.changed() => match changed {
                Ok(()) => true,
                Err(_) => return table,
            },
            _ = tick.tick() => false,
            _ = tokio::time::sleep(retry), if failing => {
                retry = (retry * 2).min(RESYNC_INTERVAL);
                false
            }
            _ = stop.wait_for(|s| *s) => return table,
        };
        if changed && last_pass.elapsed() < SETTLE {
            // A burst of UPDATEs changes the table many times: within a burst, let it settle
            // so one pass (one kernel dump) covers it instead of one pass per change. The first
            // change after a quiet period goes through at once: a failover (BFD, a withdraw)
            // must not wait.
            tokio::select! {
                _ = tokio::time::sleep(SETTLE.saturating_sub(last_pass.elapsed())) => {}
                _ = stop.wait_for(|s| *s) => return table,
            }
        }
    }
}

/// Removes every route with our protocol id, for an orderly shutdown: a node that stops
/// routing must not keep drawing traffic towards next hops it no longer tracks. A graceful
/// restart skips this (the routes then stay while the next process adopts them), so the
/// daemon calls it in exactly one place. Every route is tried: one the kernel removed already
/// (its link went down) must not leave the others behind. The first error is returned with the
/// count of the others.
pub async fn flush_on_shutdown(table: &mut impl RouteTable) -> Result<usize> {
    let kernel = table.routes().await.context("reading the kernel's routes")?;
    let mut removed = 0;
    let mut errors = Vec::new();
    for op in plan(&Fib::new(), &kernel) {
        match table.apply(&op).await {
            Ok(()) => removed += 1,
            Err(err) => errors.push(err),
        }
    }
    match errors.len() {
        0 => Ok(removed),
        n => {
            let first = errors.swap_remove(0);
            Err(first.context(format!("{n} of {} routes not removed ({removed} removed)", removed + n)))
        }
    }
}

/// The kernel's main table over rtnetlink, in the daemon's network namespace.
pub struct NetlinkRouteTable {
    handle: rtnetlink::Handle,
}

impl NetlinkRouteTable {
    /// Opens a route netlink socket; its connection runs as a task on the current runtime.
    pub fn open() -> Result<NetlinkRouteTable> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening a route netlink socket")?;
        tokio::spawn(connection);
        Ok(NetlinkRouteTable { handle })
    }

    async fn dump(&self, family: AddressFamily) -> Result<Vec<RouteMessage>> {
        let mut query = RouteMessage::default();
        query.header.address_family = family;
        self.handle.route().get(query).execute().try_collect().await.map_err(anyhow::Error::from)
    }
}

impl RouteTable for NetlinkRouteTable {
    fn interfaces_up(&self) -> std::collections::BTreeSet<u32> {
        let Ok(all) = nix::ifaddrs::getifaddrs() else { return std::collections::BTreeSet::new() };
        all.filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
            .filter_map(|a| nix::net::if_::if_nametoindex(a.interface_name.as_str()).ok())
            .collect()
    }

    async fn routes(&mut self) -> Result<Fib> {
        let mut fib = Fib::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for message in self.dump(family).await.with_context(|| format!("dumping the {family:?} routes"))? {
                if let Some((prefix, hops)) = ours(&message) {
                    fib.insert(prefix, hops);
                }
            }
        }
        Ok(fib)
    }

    async fn apply(&mut self, op: &RouteOp) -> Result<()> {
        let route = self.handle.route();
        let result = match op {
            RouteOp::Add(prefix, hops) => route.add(route_message(prefix, hops)).execute().await,
            RouteOp::Replace(prefix, hops) => route.add(route_message(prefix, hops)).replace().execute().await,
            RouteOp::Delete(prefix) => route.del(route_message(prefix, &[])).execute().await,
        };
        result.map_err(anyhow::Error::from).with_context(|| match op {
            RouteOp::Add(prefix, hops) => format!(
                "adding the route {prefix} via {} (proto {RTPROT_FERRULE}, metric {ROUTE_METRIC}); \
                 \"File exists\" means a route with that metric that Ferrule did not install holds the prefix",
                list(hops)
            ),
            RouteOp::Replace(prefix, hops) => format!("replacing the route {prefix} with next hops {}", list(hops)),
            RouteOp::Delete(prefix) => format!("removing the route {prefix} (proto {RTPROT_FERRULE})"),
        })
    }
}

/// An RTM_NEWROUTE/RTM_DELROUTE body for our route to `prefix`. A delete carries no next hop:
/// prefix, table, protocol and metric name exactly one route, every next hop included.
fn route_message(prefix: &Prefix, hops: &[FibNextHop]) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = match prefix {
        Prefix::V4(_) => AddressFamily::Inet,
        Prefix::V6(_) => AddressFamily::Inet6,
    };
    m.header.destination_prefix_length = prefix.len();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::from(RTPROT_FERRULE);
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if !prefix.is_empty() {
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(prefix.addr())));
    }
    m.attributes.push(RouteAttribute::Priority(ROUTE_METRIC));
    match hops {
        [] => {}
        [hop] => {
            m.attributes.push(gateway(prefix, hop.gateway));
            if let Some(ifindex) = hop.ifindex {
                m.attributes.push(RouteAttribute::Oif(ifindex));
            }
        }
        hops => {
            let next_hops = hops
                .iter()
                .map(|hop| {
                    let mut nh = RouteNextHop::default();
                    nh.interface_index = hop.ifindex.unwrap_or(0);
                    nh.attributes.push(gateway(prefix, hop.gateway));
                    nh
                })
                .collect();
            m.attributes.push(RouteAttribute::MultiPath(next_hops));
        }
    }
    m
}

/// RTA_GATEWAY for a gateway of the prefix's family; RTA_VIA for an IPv6 gateway of an IPv4
/// route (RFC 8950 next hops; Linux 5.2 and later).
fn gateway(prefix: &Prefix, gateway: IpAddr) -> RouteAttribute {
    match (prefix, gateway) {
        (Prefix::V4(_), IpAddr::V6(a)) => RouteAttribute::Via(RouteVia::Inet6(a)),
        (_, addr) => RouteAttribute::Gateway(RouteAddress::from(addr)),
    }
}

/// The prefix and next hops of a dumped route when it is one of ours: main table, our protocol
/// id and metric, unicast. A route of ours without a gateway (made by hand) is reported with
/// the family's unspecified address, which no desired next hop equals, so it gets replaced.
fn ours(m: &RouteMessage) -> Option<(Prefix, Vec<FibNextHop>)> {
    if u8::from(m.header.protocol) != RTPROT_FERRULE || m.header.kind != RouteType::Unicast {
        return None;
    }
    let attrs = &m.attributes;
    let table = attrs
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    let metric = attrs
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0);
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || metric != ROUTE_METRIC {
        return None;
    }
    let unspecified: IpAddr = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let destination = attrs
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => address(d),
            _ => None,
        })
        .unwrap_or(unspecified);
    let prefix = Prefix::new(destination, m.header.destination_prefix_length).ok()?;
    let hop = |attrs: &[RouteAttribute], ifindex: Option<u32>| FibNextHop {
        gateway: attrs
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Gateway(g) => address(g),
                RouteAttribute::Via(RouteVia::Inet6(a)) => Some(IpAddr::V6(*a)),
                RouteAttribute::Via(RouteVia::Inet(a)) => Some(IpAddr::V4(*a)),
                _ => None,
            })
            .unwrap_or(unspecified),
        ifindex: ifindex.filter(|i| *i != 0),
    };
    let multipath = attrs.iter().find_map(|a| match a {
        RouteAttribute::MultiPath(hops) => Some(hops),
        _ => None,
    });
    let hops = match multipath {
        Some(hops) => hops.iter().map(|nh| hop(&nh.attributes, Some(nh.interface_index))).collect(),
        None => {
            let oif = attrs.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            vec![hop(attrs, oif)]
        }
    };
    Some((prefix, hops))
}

fn address(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A route table in memory with the kernel's add/replace/delete semantics, for tests. Clones
/// share the table, so a test can change it behind the installer's back.
#[cfg(test)]
#[derive(Clone, Default)]
pub struct InMemoryRouteTable {
    pub routes: Arc<std::sync::Mutex<Fib>>,
    /// How many of the next changes fail (as a busy or refusing kernel would).
    pub fail_next: Arc<std::sync::atomic::AtomicUsize>,
    /// Interfaces that are down: a route with a next hop on one is refused whole.
    pub down: Arc<std::sync::Mutex<std::collections::BTreeSet<u32>>>,
}

#[cfg(test)]
impl RouteTable for InMemoryRouteTable {
    fn interfaces_up(&self) -> std::collections::BTreeSet<u32> {
        let down = self.down.lock().unwrap();
        (1..64).filter(|i| !down.contains(i)).collect()
    }

    async fn routes(&mut self) -> Result<Fib> {
        Ok(self.routes.lock().unwrap().clone())
    }

    async fn apply(&mut self, op: &RouteOp) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.fail_next.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            bail!("Device or resource busy");
        }
        if let RouteOp::Add(_, hops) | RouteOp::Replace(_, hops) = op {
            let down = self.down.lock().unwrap();
            if hops.iter().any(|h| h.ifindex.is_some_and(|i| down.contains(&i))) {
                bail!("Network is down");
            }
        }
        let mut routes = self.routes.lock().unwrap();
        match op {
            RouteOp::Add(prefix, _) if routes.get(prefix).is_some() => bail!("File exists: {prefix}"),
            RouteOp::Add(prefix, hops) | RouteOp::Replace(prefix, hops) => {
                routes.insert(*prefix, hops.clone());
            }
            RouteOp::Delete(prefix) => {
                if !routes.remove(prefix) {
                    bail!("No such process: {prefix}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(s: &str) -> Prefix {
        let (addr, len) = s.split_once('/').unwrap();
        Prefix::new(addr.parse().unwrap(), len.parse().unwrap()).unwrap()
    }

    fn hop(gateway: &str, ifindex: Option<u32>) -> FibNextHop {
        FibNextHop { gateway: gateway.parse().unwrap(), ifindex }
    }

    fn fib(routes: &[(&str, Vec<FibNextHop>)]) -> Fib {
        let mut fib = Fib::new();
        for (p, hops) in routes {
            fib.insert(prefix(p), hops.clone());
        }
        fib
    }

    #[test]
    fn adds_a_desired_route_the_kernel_lacks() {
        let desired = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None), hop("2001:db8:b::2", None)])]);
        assert_eq!(
            plan(&desired, &Fib::new()),
            vec![RouteOp::Add(prefix("0.0.0.0/0"), vec![hop("192.0.2.2", None), hop("2001:db8:b::2", None)])]
        );
    }

    #[test]
    fn replaces_a_route_whose_next_hops_differ() {
        let desired = fib(&[("::/0", vec![hop("2001:db8:a::2", None), hop("2001:db8:b::2", None)])]);
        let kernel = fib(&[("::/0", vec![hop("2001:db8:a::2", Some(2))])]);
        assert_eq!(
            plan(&desired, &kernel),
            vec![RouteOp::Replace(prefix("::/0"), vec![hop("2001:db8:a::2", None), hop("2001:db8:b::2", None)])]
        );
    }

    #[test]
    fn replaces_a_link_local_next_hop_on_the_wrong_interface() {
        let desired = fib(&[("::/0", vec![hop("fe80::1", Some(3))])]);
        let kernel = fib(&[("::/0", vec![hop("fe80::1", Some(4))])]);
        assert_eq!(plan(&desired, &kernel), vec![RouteOp::Replace(prefix("::/0"), vec![hop("fe80::1", Some(3))])]);
    }

    #[test]
    fn deletes_a_route_no_longer_desired() {
        let kernel = fib(&[("203.0.113.0/24", vec![hop("192.0.2.2", Some(2))])]);
        assert_eq!(plan(&Fib::new(), &kernel), vec![RouteOp::Delete(prefix("203.0.113.0/24"))]);
    }

    #[test]
    fn a_deferred_table_during_graceful_restart_adds_but_deletes_nothing() {
        let kernel = fib(&[("203.0.113.0/24", vec![hop("192.0.2.2", Some(2))])]);
        let mut desired = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None)])]);
        desired.set_deferred(true);
        assert_eq!(plan(&desired, &kernel), vec![RouteOp::Add(prefix("0.0.0.0/0"), vec![hop("192.0.2.2", None)])]);
        desired.set_deferred(false);
        assert_eq!(plan(&desired, &kernel)[0], RouteOp::Delete(prefix("203.0.113.0/24")));

        // A kept ECMP route that one re-learned leg would shrink stays whole until the end.
        let kernel = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", Some(2)), hop("192.0.2.6", Some(5))])]);
        let mut desired = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None)])]);
        desired.set_deferred(true);
        assert_eq!(plan(&desired, &kernel), vec![], "nothing replaced while deferred");
        desired.set_deferred(false);
        assert_eq!(plan(&desired, &kernel), vec![RouteOp::Replace(prefix("0.0.0.0/0"), vec![hop("192.0.2.2", None)])]);
    }

    /// A next hop on an interface that is down makes the kernel refuse a whole ECMP route: the
    /// usable next hops are installed instead, and the whole set once the link is back.
    #[tokio::test]
    async fn an_ecmp_route_with_a_next_hop_on_a_down_link_is_installed_without_it() {
        let mut table = InMemoryRouteTable::default();
        let both = vec![hop("192.0.2.2", Some(2)), hop("192.0.2.6", Some(5))];
        let desired = fib(&[("0.0.0.0/0", both.clone())]);
        table.down.lock().unwrap().insert(5);
        sync(&desired, &mut table).await.unwrap();
        assert_eq!(*table.routes.lock().unwrap(), fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", Some(2))])]));
        sync(&desired, &mut table).await.expect("still nothing to report while the link is down");
        assert_eq!(table.routes.lock().unwrap().len(), 1);

        // Every next hop down: nothing to install, and that is an error.
        table.down.lock().unwrap().insert(2);
        table.routes.lock().unwrap().clear();
        assert!(sync(&desired, &mut table).await.is_err());

        table.down.lock().unwrap().clear();
        sync(&desired, &mut table).await.unwrap();
        assert_eq!(*table.routes.lock().unwrap(), desired);
    }

    /// A route the kernel removed already (its link went down) fails to delete; the flush still
    /// removes every other route, then reports the failure.
    #[tokio::test]
    async fn the_shutdown_flush_removes_every_route_it_can() {
        let mut table = InMemoryRouteTable::default();
        for p in ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.128/25"] {
            table.routes.lock().unwrap().insert(prefix(p), vec![hop("192.0.2.9", Some(2))]);
        }
        table.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
        let err = flush_on_shutdown(&mut table).await.unwrap_err();
        assert!(format!("{err:#}").contains("1 of 3 routes not removed (2 removed)"), "{err:#}");
        assert_eq!(table.routes.lock().unwrap().len(), 1, "only the failed one left");
    }

    #[test]
    fn nothing_to_do_when_the_kernel_matches_whatever_the_ecmp_order() {
        // The kernel reports an interface for every next hop, including those it resolved.
        let desired = fib(&[
            ("0.0.0.0/0", vec![hop("192.0.2.6", None), hop("192.0.2.2", None)]),
            ("::/0", vec![hop("fe80::2", Some(4)), hop("fe80::1", Some(3))]),
        ]);
        let kernel = fib(&[
            ("0.0.0.0/0", vec![hop("192.0.2.2", Some(2)), hop("192.0.2.6", Some(5))]),
            ("::/0", vec![hop("fe80::1", Some(3)), hop("fe80::2", Some(4))]),
        ]);
        assert!(plan(&desired, &kernel).is_empty());
    }

    #[test]
    fn same_link_local_on_two_interfaces_needs_both() {
        // Unnumbered ToRs may share a link-local address; only the interface tells them apart.
        let desired = fib(&[("::/0", vec![hop("fe80::1", Some(3)), hop("fe80::1", Some(4))])]);
        let kernel = fib(&[("::/0", vec![hop("fe80::1", Some(3)), hop("fe80::1", Some(3))])]);
        assert_eq!(plan(&desired, &kernel).len(), 1);
    }

    #[test]
    fn hand_made_route_without_gateway_is_replaced() {
        let desired = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None)])]);
        let kernel = fib(&[("0.0.0.0/0", vec![hop("0.0.0.0", Some(2))])]);
        assert_eq!(plan(&desired, &kernel), vec![RouteOp::Replace(prefix("0.0.0.0/0"), vec![hop("192.0.2.2", None)])]);
    }

    #[test]
    fn multipath_message_has_one_next_hop_per_gateway_and_via_for_ipv6_gateways() {
        let m = route_message(&prefix("0.0.0.0/0"), &[hop("192.0.2.2", None), hop("fe80::1", Some(7))]);
        assert_eq!(u8::from(m.header.protocol), RTPROT_FERRULE);
        assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Destination(_))));
        let Some(RouteAttribute::MultiPath(hops)) =
            m.attributes.iter().find(|a| matches!(a, RouteAttribute::MultiPath(_)))
        else {
            panic!("no RTA_MULTIPATH in {m:?}");
        };
        assert_eq!(hops[0].attributes, vec![RouteAttribute::Gateway(RouteAddress::Inet("192.0.2.2".parse().unwrap()))]);
        assert_eq!(hops[1].interface_index, 7);
        assert_eq!(hops[1].attributes, vec![RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap()))]);
        // And the kernel's answer in the same shape reads back as the same route.
        let mut dumped = m.clone();
        dumped.header.kind = RouteType::Unicast;
        assert_eq!(ours(&dumped), Some((prefix("0.0.0.0/0"), vec![hop("192.0.2.2", None), hop("fe80::1", Some(7))])));
    }

    #[test]
    fn routes_of_other_protocols_or_metrics_are_not_ours() {
        let mut m = route_message(&prefix("203.0.113.0/24"), &[hop("192.0.2.2", None)]);
        m.header.protocol = RouteProtocol::Bgp;
        assert_eq!(ours(&m), None);
        let mut m = route_message(&prefix("203.0.113.0/24"), &[hop("192.0.2.2", None)]);
        m.attributes.retain(|a| !matches!(a, RouteAttribute::Priority(_)));
        assert_eq!(ours(&m), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_change_is_retried_within_a_fraction_of_a_second() {
        let (fib_tx, fib_rx) = watch::channel(Arc::new(Fib::new()));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let table = InMemoryRouteTable::default();
        tokio::spawn(run(fib_rx, table.clone(), stop_rx));
        tokio::time::sleep(Duration::from_millis(10)).await;
        table.fail_next.store(1, std::sync::atomic::Ordering::SeqCst);
        let default = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None)])]);
        fib_tx.send_replace(Arc::new(default.clone()));
        tokio::time::sleep(SETTLE + Duration::from_millis(10)).await;
        assert_eq!(table.fail_next.load(std::sync::atomic::Ordering::SeqCst), 0, "the change was attempted");
        assert!(table.routes.lock().unwrap().is_empty(), "and failed");
        tokio::time::sleep(RETRY_FIRST + Duration::from_millis(10)).await;
        assert_eq!(*table.routes.lock().unwrap(), default, "retried long before the next resync");
    }

    #[tokio::test(start_paused = true)]
    async fn installer_follows_the_speaker_and_restores_a_route_deleted_by_hand() {
        let (fib_tx, fib_rx) = watch::channel(Arc::new(Fib::new()));
        let (stop_tx, stop_rx) = watch::channel(false);
        let table = InMemoryRouteTable::default();
        // A stale route from a previous run, no longer desired.
        table.routes.lock().unwrap().insert(prefix("198.51.100.0/24"), vec![hop("192.0.2.9", Some(2))]);
        let task = tokio::spawn(run(fib_rx, table.clone(), stop_rx));
        let default = fib(&[("0.0.0.0/0", vec![hop("192.0.2.2", None), hop("192.0.2.6", None)])]);
        fib_tx.send_replace(Arc::new(default.clone()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(*table.routes.lock().unwrap(), default);

        table.routes.lock().unwrap().remove(&prefix("0.0.0.0/0"));
        tokio::time::sleep(RESYNC_INTERVAL + Duration::from_millis(10)).await;
        assert_eq!(*table.routes.lock().unwrap(), default, "the periodic pass restores the deleted route");

        stop_tx.send_replace(true);
        let mut table = task.await.unwrap();
        assert_eq!(flush_on_shutdown(&mut table).await.unwrap(), 1);
        assert!(table.routes.lock().unwrap().is_empty());
    }
}
