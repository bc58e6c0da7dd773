//! Turns the raw TOML structs into a `Model`, collecting every problem with its location.
//! The rules live here and only here (the model boundary); the checks are pure functions on
//! values, and the `Validator` attaches paths and positions. No I/O.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use ipnet::IpNet;

use crate::bgp_types::{Community, LargeCommunity, PrefixFilter};
use crate::error::ConfigError;
use crate::locate::{FieldPath, Locator};
use crate::model::{
    default_bgp_port, default_hold_time, default_listen_limit, default_maglev_table_size, default_max_prefix_action,
    Announce, AnnounceWhen, Backend, Bfd, Bgp, GracefulRestart, HealthCheck, HealthKind, ImportAction, ImportRule,
    Listen, MaxPrefix, MaxPrefixAction, Mode, Model, Node, Password, Peer, PeerOptions, Protocol, Service,
};
use crate::model::{Decap, PortRange};
use crate::raw::{
    known_keys, RawAnnounce, RawBackend, RawBfd, RawBgp, RawDecap, RawGracefulRestart, RawHealth, RawImportRule,
    RawListen, RawMaxPrefix, RawModel, RawNode, RawPeer, RawService,
};

const PRIVATE_ASN_HINT: &str = "use a private ASN such as 64512-65534 or 4200000000-4294967294";

pub(crate) struct Validator<'a> {
    loc: &'a Locator<'a>,
    errors: Vec<ConfigError>,
}

impl<'a> Validator<'a> {
    pub(crate) fn new(loc: &'a Locator<'a>) -> Self {
        Validator { loc, errors: Vec::new() }
    }

    pub(crate) fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    fn error(&mut self, path: &FieldPath, message: String) {
        self.errors.push(self.loc.error_at_value(path, message));
    }

    /// Records `Err` as an error at `path`.
    fn check<T>(&mut self, path: &FieldPath, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// A required field: reports it missing (at the enclosing table), else runs `check` on it.
    fn required<T, U>(
        &mut self,
        path: &FieldPath,
        value: Option<T>,
        example: &str,
        check: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<U> {
        match value {
            Some(v) => self.check(path, check(v)),
            None => {
                let key = path.last_key().unwrap_or_default();
                self.error(path, format!("missing `{key}`; add e.g. `{key} = {example}`"));
                None
            }
        }
    }

    /// A key serde skipped: a typo or a key from a newer version. Reported at the key itself.
    pub(crate) fn unknown_key(&mut self, path: &FieldPath) {
        let key = path.last_key().unwrap_or_default();
        let table = path.parent().unwrap_or_default();
        let known = known_keys(&table.schema_keys());
        let message = match closest_key(key, known) {
            Some(k) => format!("unknown key `{key}`; did you mean `{k}`?"),
            None if known.is_empty() => format!("unknown key `{key}`; remove it"),
            None => format!("unknown key `{key}`; remove it (keys allowed here: {})", known.join(", ")),
        };
        self.errors.push(self.loc.error_at_key(path, message));
    }

    /// The whole model, or `None` if anything was reported (callers then return the errors).
    pub(crate) fn model(&mut self, raw: RawModel) -> Option<Model> {
        let root = FieldPath::root();
        let node = self.node(&root.key("node"), raw.node);
        let bgp = self.bgp(&root.key("bgp"), raw.bgp);
        let services = self.services(&root.key("services"), raw.services);
        let decap = match raw.decap {
            Some(d) => self.decap(&root.key("decap"), d),
            None => Some(Decap::default()),
        };
        Some(Model { node: node?, bgp: bgp?, services: services?, decap: decap? })
    }

    /// `[decap]`: interfaces and addresses, each listed once; both or neither.
    fn decap(&mut self, path: &FieldPath, raw: RawDecap) -> Option<Decap> {
        let mut ok = self.interface_names(&path.key("interfaces"), &raw.interfaces, "interface");
        let mut addresses = Vec::new();
        let mut seen: HashMap<IpAddr, FieldPath> = HashMap::new();
        for (i, text) in raw.addresses.iter().enumerate() {
            let p = path.key("addresses").index(i);
            match check_decap_address(text) {
                Err(message) => {
                    self.error(&p, message);
                    ok = false;
                }
                Ok(ip) => {
                    if let Some(first) = seen.get(&ip) {
                        let message =
                            format!("address {ip} is listed twice (first at {}); remove one", self.loc.describe(first));
                        self.error(&p, message);
                        ok = false;
                    } else {
                        seen.insert(ip, p);
                        addresses.push(ip);
                    }
                }
            }
        }
        if raw.interfaces.is_empty() != raw.addresses.is_empty() {
            let message = if raw.interfaces.is_empty() {
                "[decap] has addresses but no `interfaces`; list the interfaces the tunnels arrive on, e.g. \
                 `interfaces = [\"eth0\"]`"
            } else {
                "[decap] has interfaces but no `addresses`; list this backend's addresses in the DSR services, \
                 e.g. `addresses = [\"2001:db8:300::21\"]`"
            };
            self.error(path, message.to_owned());
            ok = false;
        }
        ok.then_some(Decap { interfaces: raw.interfaces, addresses })
    }

    fn node(&mut self, path: &FieldPath, raw: Option<RawNode>) -> Option<Node> {
        let Some(raw) = raw else {
            self.error(path, "missing [node] table; add one with `name`, `asn` and `router_id`".to_owned());
            return None;
        };
        let name = self.required(&path.key("name"), raw.name, "\"node1\"", check_node_name);
        let asn = self.required(&path.key("asn"), raw.asn, "65101", check_asn);
        let router_id = self.required(&path.key("router_id"), raw.router_id, "\"192.0.2.11\"", |s| check_router_id(&s));
        let uplinks = self.uplinks(&path.key("uplinks"), raw.uplinks);
        let snat_ports = match raw.snat_ports {
            Some(s) => self.check(&path.key("snat_ports"), check_snat_ports(&s)),
            None => Some(PortRange::default()),
        };
        Some(Node { name: name?, asn: asn?, router_id: router_id?, uplinks: uplinks?, snat_ports: snat_ports? })
    }

    fn uplinks(&mut self, path: &FieldPath, raw: Vec<String>) -> Option<Vec<String>> {
        self.interface_names(path, &raw, "uplink").then_some(raw)
    }

    /// A list of interface names (`what` in the messages): each valid, each once.
    fn interface_names(&mut self, path: &FieldPath, names: &[String], what: &str) -> bool {
        let mut ok = true;
        let mut seen: HashMap<&str, FieldPath> = HashMap::new();
        for (i, name) in names.iter().enumerate() {
            let p = path.index(i);
            if let Err(message) = check_ifname(what, name) {
                self.error(&p, message);
                ok = false;
            } else if let Some(first) = seen.get(name.as_str()) {
                let message =
                    format!("{what} `{name}` is listed twice (first at {}); remove one", self.loc.describe(first));
                self.error(&p, message);
                ok = false;
            } else {
                seen.insert(name, p);
            }
        }
        ok
    }

    fn bgp(&mut self, path: &FieldPath, raw: RawBgp) -> Option<Bgp> {
        let mut ok = true;

        let mut peers = Vec::new();
        let mut seen_peers: HashMap<String, FieldPath> = HashMap::new();
        let mut seen_link_local: HashMap<IpAddr, (FieldPath, Option<Password>)> = HashMap::new();
        for (i, peer) in raw.peers.into_iter().enumerate() {
            let p = path.key("peers").index(i);
            let settings = self.peer_settings(&p, &peer);
            let asn = self.required(&p.key("asn"), peer.asn, "65000", check_asn);
            let Some((address, interface, key_path)) = self.peer_identity(&p, &peer) else {
                ok = false;
                continue;
            };
            // A link-local address is one peer per link: fe80::1 on eth0 and on eth1 are two ToRs.
            let key = match (address, &interface) {
                (Some(a), Some(i)) => format!("{a}%{i}"),
                (Some(a), None) => a.to_string(),
                (None, i) => i.clone().unwrap_or_default(),
            };
            if let Some(first) = seen_peers.get(&key) {
                let message = format!(
                    "peer {key} is already defined at {}; keep one [[bgp.peers]] entry per address or interface",
                    self.loc.describe(first)
                );
                self.error(&key_path, message);
                ok = false;
            } else {
                seen_peers.insert(key, key_path);
            }
            if let (Some(a @ IpAddr::V6(_)), Some(_), Some(options)) = (address, &interface, &settings) {
                // The listening socket holds one TCP MD5 key per address: Linux ties a key to an
                // interface only for a VRF device, so one link-local address on two links must
                // carry one password (or none on both).
                match seen_link_local.get(&a) {
                    Some((first, password)) if *password != options.password => {
                        let message = format!(
                            "peer {a} on another link ({}) has another TCP MD5 password; the listening socket holds \
                             one key per address (Linux ties a key to an interface only in a VRF): give both the same \
                             password, or neither",
                            self.loc.describe(first)
                        );
                        self.error(&p.key("password"), message);
                        ok = false;
                    }
                    Some(_) => {}
                    None => {
                        seen_link_local.insert(a, (p.key("address"), options.password.clone()));
                    }
                }
            }
            match (asn, settings) {
                (Some(asn), Some(options)) => peers.push(Peer { address, interface, asn, options }),
                _ => ok = false,
            }
        }

        let mut listen = Vec::new();
        let mut seen_ranges: HashMap<IpNet, FieldPath> = HashMap::new();
        for (i, l) in raw.listen.into_iter().enumerate() {
            let p = path.key("listen").index(i);
            let range_path = p.key("range");
            let range = self.required(&range_path, l.range.clone(), "\"2001:db8:500::/64\"", |s| check_prefix(&s));
            let asn = self.required(&p.key("asn"), l.asn, "65200", check_asn);
            let limit = match l.limit {
                None => Some(default_listen_limit()),
                Some(n) => self.check(&p.key("limit"), check_listen_limit(n)),
            };
            let options = self.peer_settings(&p, &listen_as_peer(l));
            if let Some(range) = range {
                if let Some(first) = seen_ranges.get(&range) {
                    let message =
                        format!("range {range} is already listed at {}; remove one", self.loc.describe(first));
                    self.error(&range_path, message);
                    ok = false;
                } else {
                    seen_ranges.insert(range, range_path);
                }
            }
            match (range, asn, limit, options) {
                (Some(range), Some(asn), Some(limit), Some(options)) => {
                    listen.push(Listen { range, asn, limit, options })
                }
                _ => ok = false,
            }
        }

        let mut announce = Vec::new();
        let mut seen_prefixes: HashMap<IpNet, FieldPath> = HashMap::new();
        for (i, a) in raw.announce.into_iter().enumerate() {
            let entry = path.key("announce").index(i);
            let p = entry.key("prefix");
            let attributes = self.announce_attributes(&entry, &a);
            let Some(prefix) = self.required(&p, a.prefix, "\"2001:db8:100::/64\"", |s| check_prefix(&s)) else {
                ok = false;
                continue;
            };
            let Some((communities, large_communities, med, local_pref)) = attributes else {
                ok = false;
                continue;
            };
            if let Some(first) = seen_prefixes.get(&prefix) {
                let message = format!(
                    "prefix {prefix} is already announced at {}; remove the duplicate",
                    self.loc.describe(first)
                );
                self.error(&p, message);
                ok = false;
            } else {
                seen_prefixes.insert(prefix, p);
                announce.push(Announce { prefix, communities, large_communities, med, local_pref });
            }
        }

        let listen_port = match raw.listen_port {
            None => Some(default_bgp_port()),
            Some(port) => self.check(&path.key("listen_port"), check_listen_port(port)),
        };
        let listen_port = listen_port?;
        let install_routes = raw.install_routes.unwrap_or(true);
        ok.then_some(Bgp { listen_port, install_routes, peers, listen, announce })
    }

    /// The optional per-peer keys, with their defaults.
    /// Who the peer is: `address`, `interface`, or both for a fixed link-local address.
    /// Returns them with the path duplicates are reported at.
    fn peer_identity(&mut self, p: &FieldPath, raw: &RawPeer) -> Option<(Option<IpAddr>, Option<String>, FieldPath)> {
        let (address_path, interface_path) = (p.key("address"), p.key("interface"));
        let address = match &raw.address {
            None => Some(None),
            Some(s) => self.check(&address_path, check_peer_address(s)).map(Some),
        };
        let interface = match &raw.interface {
            None => Some(None),
            Some(name) => self.check(&interface_path, check_ifname("interface", name).map(|()| Some(name.clone()))),
        };
        let (address, interface) = (address?, interface?);
        match (address, &interface) {
            (None, None) => {
                self.error(
                    p,
                    "a peer needs `address` (e.g. `address = \"2001:db8:1::1\"`) or, for unnumbered peering, `interface` (e.g. `interface = \"eth0\"`)".into(),
                );
                None
            }
            (Some(IpAddr::V6(a)), Some(_)) if a.is_unicast_link_local() => Some((address, interface, address_path)),
            (Some(a), Some(i)) => {
                self.error(
                    &interface_path,
                    format!("give `address` or `interface`, not both: {a} is not link-local, so it needs no interface; remove `interface = \"{i}\"` (or `address` for unnumbered peering)"),
                );
                None
            }
            (Some(IpAddr::V6(a)), None) if a.is_unicast_link_local() => {
                self.error(
                    &address_path,
                    format!("{a} is a link-local address and is only meaningful on one link; add `interface = \"eth0\"` naming that link"),
                );
                None
            }
            (Some(_), None) => Some((address, None, address_path)),
            (None, Some(_)) => Some((None, interface, interface_path)),
        }
    }

    fn peer_settings(&mut self, p: &FieldPath, raw: &RawPeer) -> Option<PeerOptions> {
        let port = match raw.port {
            None => Some(default_bgp_port()),
            Some(port) => self.check(&p.key("port"), check_port(port)),
        };
        let hold_time = match raw.hold_time {
            None => Some(default_hold_time()),
            Some(h) => self.check(&p.key("hold_time"), check_hold_time(h)),
        };
        let mut import = Some(Vec::new());
        for (i, entry) in raw.import.iter().enumerate() {
            match self.check(&p.key("import").index(i), entry.parse::<PrefixFilter>()) {
                Some(f) => {
                    if let Some(list) = import.as_mut() {
                        list.push(f)
                    }
                }
                None => import = None,
            }
        }
        let max_prefix = match &raw.max_prefix {
            None => Some(None),
            Some(m) => self.max_prefix(&p.key("max_prefix"), m).map(Some),
        };
        let mut import_rules = Some(Vec::new());
        for (i, rule) in raw.import_rules.iter().enumerate() {
            match self.import_rule(&p.key("import_rules").index(i), rule) {
                Some(r) => {
                    if let Some(list) = import_rules.as_mut() {
                        list.push(r)
                    }
                }
                None => import_rules = None,
            }
        }
        let bfd = match &raw.bfd {
            None => Some(None),
            Some(b) => self.bfd(&p.key("bfd"), b).map(Some),
        };
        let password = match &raw.password {
            None => Some(None),
            // The key itself never appears in an error message.
            Some(key) => self.check(&p.key("password"), check_password(key)).map(Some),
        };
        let graceful_restart = match &raw.graceful_restart {
            None => Some(None),
            Some(g) => self.graceful_restart(&p.key("graceful_restart"), g).map(Some),
        };
        Some(PeerOptions {
            import_rules: import_rules?,
            port: port?,
            passive: raw.passive.unwrap_or(false),
            hold_time: hold_time?,
            import: import?,
            max_prefix: max_prefix?,
            bfd: bfd?,
            password: password?,
            graceful_restart: graceful_restart?,
        })
    }

    fn bfd(&mut self, p: &FieldPath, raw: &RawBfd) -> Option<Bfd> {
        let interval_ms = self.required(&p.key("interval_ms"), raw.interval_ms, "300", |v| {
            u32::try_from(v).ok().filter(|v| (10..=60_000).contains(v)).ok_or_else(|| {
                format!("BFD interval {v} ms is out of range; use 10 to 60000 (100 to 300 is usual on a fabric link)")
            })
        });
        let multiplier = match raw.multiplier {
            None => Some(3),
            Some(m) => self.check(
                &p.key("multiplier"),
                u8::try_from(m)
                    .ok()
                    .filter(|m| *m >= 1)
                    .ok_or_else(|| format!("BFD multiplier {m} is out of range; use 1 to 255 (3 is usual)")),
            ),
        };
        Some(Bfd { interval_ms: interval_ms?, multiplier: multiplier? })
    }

    fn graceful_restart(&mut self, p: &FieldPath, raw: &RawGracefulRestart) -> Option<GracefulRestart> {
        let restart_time_s = match raw.restart_time_s {
            None => Some(120),
            Some(t) => self.check(
                &p.key("restart_time_s"),
                u16::try_from(t).ok().filter(|t| (1..=4095).contains(t)).ok_or_else(|| {
                    format!("restart_time_s {t} is out of range; the capability carries 1 to 4095 seconds (RFC 4724)")
                }),
            ),
        };
        Some(GracefulRestart { restart_time_s: restart_time_s? })
    }

    fn import_rule(&mut self, p: &FieldPath, raw: &RawImportRule) -> Option<ImportRule> {
        // Absent: Some(None); a valid AS: Some(Some(asn)); anything else: None (an error).
        let asn = |v: Option<i64>| match v {
            None => Some(None),
            Some(n) => u32::try_from(n).ok().filter(|n| *n != 0).map(Some),
        };
        let as_path_contains = match asn(raw.as_path_contains) {
            Some(v) => v,
            None => return self.check(&p.key("as_path_contains"), Err("not an AS number (1 to 4294967295)".into())),
        };
        let origin_as = match asn(raw.origin_as) {
            Some(v) => v,
            None => return self.check(&p.key("origin_as"), Err("not an AS number (1 to 4294967295)".into())),
        };
        let community = match raw.community.as_deref().map(str::parse::<Community>).transpose() {
            Ok(c) => c,
            Err(e) => return self.check(&p.key("community"), Err(e)),
        };
        let large_community = match raw.large_community.as_deref().map(str::parse::<LargeCommunity>).transpose() {
            Ok(c) => c,
            Err(e) => return self.check(&p.key("large_community"), Err(e)),
        };
        if as_path_contains.is_none() && origin_as.is_none() && community.is_none() && large_community.is_none() {
            self.error(
                p,
                "an import rule needs a condition: as_path_contains, origin_as, community or large_community".into(),
            );
            return None;
        }
        let value = |this: &mut Self| match raw.value.map(u32::try_from) {
            Some(Ok(v)) => Some(v),
            _ => {
                this.error(&p.key("value"), "this action needs `value`, 0 to 4294967295".into());
                None
            }
        };
        let action = match raw.action.as_deref() {
            Some("accept") => ImportAction::Accept,
            Some("reject") => ImportAction::Reject,
            Some("local_pref") => ImportAction::LocalPref(value(self)?),
            Some("med") => ImportAction::Med(value(self)?),
            other => {
                let what = other.map_or("missing `action`".to_string(), |o| format!("unknown action `{o}`"));
                self.error(&p.key("action"), format!("{what}; use accept, reject, local_pref or med"));
                return None;
            }
        };
        Some(ImportRule { as_path_contains, origin_as, community, large_community, action })
    }

    fn max_prefix(&mut self, p: &FieldPath, raw: &RawMaxPrefix) -> Option<MaxPrefix> {
        let limit = self.required(&p.key("limit"), raw.limit, "1000", |l| {
            u32::try_from(l).ok().filter(|l| *l > 0).ok_or_else(|| {
                format!("max_prefix limit {l} is out of range; use 1 to 4294967295 (remove max_prefix for no limit)")
            })
        });
        let action = match raw.action.as_deref() {
            None => Some(default_max_prefix_action()),
            Some("warn") => Some(MaxPrefixAction::Warn),
            Some("teardown") => Some(MaxPrefixAction::Teardown),
            Some(other) => {
                self.error(
                    &p.key("action"),
                    format!("unknown max_prefix action `{other}`; use \"warn\" or \"teardown\""),
                );
                None
            }
        };
        Some(MaxPrefix { limit: limit?, action: action? })
    }

    #[allow(clippy::type_complexity)]
    fn announce_attributes(
        &mut self,
        p: &FieldPath,
        raw: &RawAnnounce,
    ) -> Option<(Vec<Community>, Vec<LargeCommunity>, Option<u32>, Option<u32>)> {
        let mut ok = true;
        let mut communities = Vec::new();
        for (i, c) in raw.communities.iter().enumerate() {
            match self.check(&p.key("communities").index(i), c.parse::<Community>()) {
                Some(c) => communities.push(c),
                None => ok = false,
            }
        }
        let mut large = Vec::new();
        for (i, c) in raw.large_communities.iter().enumerate() {
            match self.check(&p.key("large_communities").index(i), c.parse::<LargeCommunity>()) {
                Some(c) => large.push(c),
                None => ok = false,
            }
        }
        let mut u32_field = |key: &str, value: Option<i64>| match value {
            None => Some(None),
            Some(v) => self
                .check(
                    &p.key(key),
                    u32::try_from(v).map_err(|_| format!("{key} {v} is out of range; use 0 to 4294967295")),
                )
                .map(Some),
        };
        let med = u32_field("med", raw.med);
        let local_pref = u32_field("local_pref", raw.local_pref);
        if !ok {
            return None;
        }
        Some((communities, large, med?, local_pref?))
    }

    fn services(&mut self, path: &FieldPath, raw: Vec<RawService>) -> Option<Vec<Service>> {
        let mut ok = true;
        let mut services = Vec::new();
        let mut names: HashMap<String, FieldPath> = HashMap::new();
        // (vip, port, protocol) -> (service name, path of its vip)
        let mut frontends: HashMap<(IpAddr, u16, Protocol), (String, FieldPath)> = HashMap::new();

        for (i, raw) in raw.into_iter().enumerate() {
            let p = path.index(i);
            let name_path = p.key("name");
            let name = raw.name.clone();
            let service = self.service(&p, raw);

            if let Some(name) = name.filter(|n| !n.is_empty()) {
                if let Some(first) = names.get(&name) {
                    let message = format!(
                        "service name `{name}` is already used at {}; service names must be unique",
                        self.loc.describe(first)
                    );
                    self.error(&name_path, message);
                    ok = false;
                } else {
                    names.insert(name, name_path);
                }
            }

            let Some(service) = service else {
                ok = false;
                continue;
            };
            let vip_path = p.key("vip");
            let key = (service.vip, service.port, service.protocol);
            if let Some((other, other_vip)) = frontends.get(&key) {
                let message = format!(
                    "duplicate VIP {} port {}/{}, also used by service `{other}` at {}; give this service a different VIP, port or protocol",
                    service.vip,
                    service.port,
                    service.protocol,
                    self.loc.describe(other_vip)
                );
                self.error(&vip_path, message);
                ok = false;
            } else {
                frontends.insert(key, (service.name.clone(), vip_path));
            }
            services.push(service);
        }
        if services.len() > MAX_SERVICES {
            let message = format!(
                "{} services, more than the {MAX_SERVICES} the load balancer holds; split them over more nodes",
                services.len()
            );
            self.error(path, message);
            ok = false;
        }
        let backends: HashSet<(IpAddr, u16)> =
            services.iter().flat_map(|s| s.backends.iter().map(|b| (b.address, b.port))).collect();
        if backends.len() > MAX_BACKENDS {
            let message = format!(
                "{} distinct backends (address and port) over all services, more than the {MAX_BACKENDS} the load balancer holds",
                backends.len()
            );
            self.error(path, message);
            ok = false;
        }
        ok.then_some(services)
    }

    fn service(&mut self, path: &FieldPath, raw: RawService) -> Option<Service> {
        let name = self.required(&path.key("name"), raw.name, "\"web\"", |s| {
            if s.is_empty() {
                Err("service name must not be empty; name it, e.g. `web`".to_owned())
            } else {
                Ok(s)
            }
        });
        let vip = self.required(&path.key("vip"), raw.vip, "\"2001:db8:200::10\"", |s| check_vip(&s));
        let port = self.required(&path.key("port"), raw.port, "80", check_port);
        let protocol = self.required(&path.key("protocol"), raw.protocol, "\"tcp\"", |s| check_protocol(&s));
        let mode = self.required(&path.key("mode"), raw.mode, "\"dsr\"", |s| check_mode(&s));
        let backends = self.backends(&path.key("backends"), raw.backends, vip, mode);
        let health = match &raw.health {
            None => Some(None),
            Some(h) => self.health(&path.key("health"), h).map(Some),
        };
        let announce = match raw.announce.as_deref() {
            None | Some("healthy") => Some(AnnounceWhen::Healthy),
            Some("local") => Some(AnnounceWhen::Local),
            Some(other) => {
                let message = format!("unknown announce `{other}`; use \"healthy\" (default) or \"local\"");
                self.error(&path.key("announce"), message);
                None
            }
        };
        let table = match raw.maglev_table_size {
            None => Some(default_maglev_table_size()),
            Some(n) => {
                self.check(&path.key("maglev_table_size"), check_maglev_size(n, backends.as_ref().map(Vec::len)))
            }
        };
        Some(Service {
            name: name?,
            vip: vip?,
            port: port?,
            protocol: protocol?,
            mode: mode?,
            backends: backends?,
            health: health?,
            announce: announce?,
            maglev_table_size: table?,
        })
    }

    fn health(&mut self, p: &FieldPath, raw: &RawHealth) -> Option<HealthCheck> {
        let kind = self.required(&p.key("kind"), raw.kind.clone(), "\"tcp\"", |k| match k.as_str() {
            "tcp" => Ok(HealthKind::Tcp),
            "http" => Ok(HealthKind::Http),
            other => {
                Err(format!("unknown health check kind `{other}`; use \"tcp\" or \"http\" (remove `health` for none)"))
            }
        });
        let mut bounded = |key: &str, value: Option<i64>, default: u32, lo: i64, hi: i64| match value {
            None => Some(default),
            Some(v) if (lo..=hi).contains(&v) => Some(v as u32),
            Some(v) => {
                self.error(&p.key(key), format!("{key} {v} is out of range; use {lo} to {hi}"));
                None
            }
        };
        let interval_ms = bounded("interval_ms", raw.interval_ms, 1000, 10, 3_600_000);
        let timeout_ms = bounded("timeout_ms", raw.timeout_ms, 1000, 1, 3_600_000);
        let rise = bounded("rise", raw.rise, 2, 1, 100);
        let fall = bounded("fall", raw.fall, 2, 1, 100);
        let expect_status = match raw.expect_status {
            None => None,
            Some(s) if (100..=599).contains(&s) => Some(s as u16),
            Some(s) => {
                self.error(&p.key("expect_status"), format!("expect_status {s} is not an HTTP status; use 100 to 599"));
                return None;
            }
        };
        let kind = kind?;
        let (path, expect_status) = match kind {
            HealthKind::Http => {
                let path = raw.path.clone().unwrap_or_else(|| "/".to_owned());
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    self.error(&p.key("path"), format!("health path `{path}` must start with `/` and have no spaces"));
                    return None;
                }
                (Some(path), Some(expect_status.unwrap_or(200)))
            }
            HealthKind::Tcp => {
                for key in ["path", "expect_status"] {
                    let set = if key == "path" { raw.path.is_some() } else { raw.expect_status.is_some() };
                    if set {
                        self.error(&p.key(key), format!("`{key}` applies to kind = \"http\" only; remove it"));
                        return None;
                    }
                }
                (None, None)
            }
        };
        Some(HealthCheck {
            kind,
            interval_ms: interval_ms?,
            timeout_ms: timeout_ms?,
            rise: rise?,
            fall: fall?,
            path,
            expect_status,
        })
    }

    fn backends(
        &mut self,
        path: &FieldPath,
        raw: Option<Vec<RawBackend>>,
        vip: Option<IpAddr>,
        mode: Option<Mode>,
    ) -> Option<Vec<Backend>> {
        let raw = raw.unwrap_or_default();
        if raw.is_empty() {
            self.error(
                path,
                "a service needs at least one backend; add e.g. `backends = [ { address = \"2001:db8:300::21\", port = 80 } ]`"
                    .to_owned(),
            );
            return None;
        }
        let mut ok = true;
        let mut backends = Vec::new();
        let mut seen: HashMap<(IpAddr, u16), FieldPath> = HashMap::new();
        for (i, b) in raw.into_iter().enumerate() {
            let p = path.index(i);
            let address_path = p.key("address");
            let address =
                self.required(&address_path, b.address, "\"2001:db8:300::21\"", |s| check_backend_address(&s));
            let port = self.required(&p.key("port"), b.port, "80", check_port);
            let weight = match b.weight {
                Some(w) => self.check(&p.key("weight"), check_weight(w)),
                None => Some(crate::model::default_weight()),
            };
            if let (Some(address), Some(vip), Some(mode)) = (address, vip, mode) {
                if let Err(message) = check_family(vip, address, mode) {
                    self.error(&address_path, message);
                    ok = false;
                }
            }
            let (Some(address), Some(port), Some(weight)) = (address, port, weight) else {
                ok = false;
                continue;
            };
            if let Some(first) = seen.get(&(address, port)) {
                let message = format!(
                    "backend {} is already listed at {}; remove one (use `weight` to give it a larger share)",
                    SocketAddr::new(address, port),
                    self.loc.describe(first)
                );
                self.error(&address_path, message);
                ok = false;
            } else {
                seen.insert((address, port), address_path);
            }
            backends.push(Backend { address, port, weight });
        }
        ok.then_some(backends)
    }
}

/// The largest prime table the datapath takes (its tables hold at most 2^20 slots,
/// `ferrule_ebpf::MAX_TABLE_SIZE`; a test in the appliance ties the two).
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_048_573;

/// Services the datapath holds (`FR_LB_MAX_SERVICES`). The reconciler removes services before
/// it adds others, so any config within this can replace any other.
pub const MAX_SERVICES: usize = 131_072;

/// Distinct backends (address and port) over all services. The datapath numbers backends
/// 1..65,535 (`FR_LB_MAX_BACKENDS`), and a backend leaves only after the tables stop naming it,
/// so a reload that replaces every backend needs the old and the new at once: half of them each.
pub const MAX_BACKENDS: usize = 32_767;

/// Maglev needs a prime table size (every backend's permutation then visits every slot), large
/// against the number of backends so each gets close to its weighted share.
fn check_maglev_size(n: i64, backends: Option<usize>) -> Result<u32, String> {
    const MAX: i64 = MAX_MAGLEV_TABLE_SIZE as i64;
    if !(7..=MAX).contains(&n) || !is_prime(n as u64) {
        return Err(format!("maglev_table_size {n} must be a prime between 7 and {MAX}, e.g. 65537 or 655373"));
    }
    if let Some(b) = backends {
        if (n as usize) < b * 100 {
            return Err(format!(
                "maglev_table_size {n} is too small for {b} backends: use a prime of at least {} for an even spread",
                b * 100
            ));
        }
    }
    Ok(n as u32)
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// A `[[bgp.listen]]` entry's session keys in the shape of a peer's: accepted sessions are
/// passive by nature, and the port is the listener's.
fn listen_as_peer(l: RawListen) -> RawPeer {
    RawPeer {
        address: None,
        interface: None,
        asn: l.asn,
        port: None,
        passive: Some(true),
        hold_time: l.hold_time,
        import: l.import,
        max_prefix: l.max_prefix,
        import_rules: l.import_rules,
        bfd: l.bfd,
        password: l.password,
        graceful_restart: l.graceful_restart,
    }
}

fn check_listen_limit(n: i64) -> Result<u32, String> {
    u32::try_from(n)
        .ok()
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| format!("limit {n} is out of range; allow 1 to 10000 sessions from the range"))
}

/// A TCP MD5 key: 1 to 80 bytes (the kernel's TCP_MD5SIG_MAXKEYLEN). The key is never quoted.
fn check_password(key: &str) -> Result<Password, String> {
    match key.len() {
        0 => Err("password must not be empty; remove the key for no TCP MD5 signature".into()),
        n if n > 80 => Err(format!("password is {n} bytes long; TCP MD5 keys are at most 80 bytes")),
        _ => Ok(Password::new(key.to_owned())),
    }
}

fn check_listen_port(port: i64) -> Result<u16, String> {
    u16::try_from(port)
        .map_err(|_| format!("listen_port {port} is out of range; use 1-65535, or 0 to accept no incoming sessions"))
}

fn check_hold_time(hold: i64) -> Result<u16, String> {
    match hold {
        1 | 2 => Err(format!("hold_time {hold} is not allowed (RFC 4271): use 0 to disable keepalives, or 3 or more")),
        h => u16::try_from(h).map_err(|_| format!("hold_time {h} is out of range; use 0 or 3 to 65535 seconds")),
    }
}

/// The known key closest to a misspelt one, if it is close enough to be a likely typo.
fn closest_key<'k>(key: &str, known: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(&key, k), *k))
        .filter(|(d, _)| *d <= 2 && *d < key.chars().count())
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn check_node_name(name: String) -> Result<String, String> {
    if name.is_empty() {
        return Err("node name must not be empty; use this host's name, e.g. `node1`".to_owned());
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!(
            "node name `{name}` contains {c:?}; use only letters, digits, `.`, `_` and `-` (the name becomes a directory under /sys/fs/bpf/ferrule/)"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "node name `{name}` is not usable as a directory name; use this host's name, e.g. `node1`"
        ));
    }
    let len = name.len();
    if len > 63 {
        return Err(format!(
            "node name is {len} characters long; use at most 63 (it becomes a directory under /sys/fs/bpf/ferrule/)"
        ));
    }
    Ok(name)
}

/// BGP AS numbers: reject the ones RFCs reserve, since a peer would refuse the session or
/// misinterpret the UPDATEs.
fn check_asn(asn: i64) -> Result<u32, String> {
    match asn {
        0 => Err(format!("ASN 0 is reserved (RFC 7607); {PRIVATE_ASN_HINT}")),
        23456 => Err(format!(
            "ASN 23456 is AS_TRANS (RFC 6793), a placeholder for 4-byte ASNs, not a real ASN; {PRIVATE_ASN_HINT}"
        )),
        65535 | 4_294_967_295 => Err(format!("ASN {asn} is reserved (RFC 7300); {PRIVATE_ASN_HINT}")),
        _ => u32::try_from(asn)
            .map_err(|_| format!("ASN {asn} is out of range; ASNs are 1-4294967294, {PRIVATE_ASN_HINT}")),
    }
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>().map_err(|_| {
        if s.contains('/') {
            format!("`{s}` is a prefix, not an address; drop the `/LENGTH`")
        } else {
            format!("`{s}` is not an IP address; write one like 2001:db8::1 or 192.0.2.1")
        }
    })
}

/// Fewest SNAT ports accepted: each backend (address and port) can have this many NAT flows per
/// node address at once.
const MIN_SNAT_PORTS: u32 = 256;

pub(crate) fn check_snat_ports(s: &str) -> Result<PortRange, String> {
    let example = "e.g. \"10000-32767\" (the default)";
    let parsed =
        s.split_once('-').and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)));
    let Some((first, last)) = parsed else {
        return Err(format!("snat_ports `{s}` is not a port range FIRST-LAST; use {example}"));
    };
    if first < 1024 {
        return Err(format!(
            "snat_ports `{s}` starts below 1024, among well-known service ports; start at 1024 or above, {example}"
        ));
    }
    if first > last {
        return Err(format!("snat_ports `{s}` ends before it starts; write the lower port first, {example}"));
    }
    let range = PortRange { first, last };
    if range.len() < MIN_SNAT_PORTS {
        return Err(format!(
            "snat_ports `{s}` has {} ports; give at least {MIN_SNAT_PORTS} (each is one NAT flow per backend at a time), {example}",
            range.len()
        ));
    }
    Ok(range)
}

fn check_router_id(s: &str) -> Result<Ipv4Addr, String> {
    match parse_ip(s)? {
        IpAddr::V6(_) => Err(format!(
            "router_id must be an IPv4 address (a BGP identifier is 32 bits, even on IPv6-only nodes), not `{s}`; use e.g. the node's IPv4 loopback such as 192.0.2.11"
        )),
        IpAddr::V4(ip) if ip.is_unspecified() => Err(
            "router_id 0.0.0.0 is not a valid BGP identifier; use a non-zero IPv4 address unique in the fabric, e.g. 192.0.2.11"
                .to_owned(),
        ),
        IpAddr::V4(ip) => Ok(ip),
    }
}

/// Linux accepts an interface name if it fits IFNAMSIZ (15 bytes plus NUL), is not `.` or `..`,
/// and has no `/`, `:` or whitespace (`dev_valid_name`).
fn check_ifname(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name must not be empty; use the NIC name shown by `ip link`, e.g. `eth0`"));
    }
    if name.len() > 15 {
        return Err(format!(
            "{what} `{name}` is {} bytes long; Linux interface names are at most 15, check `ip link`",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("{what} `{name}` is not a valid interface name; use the NIC name shown by `ip link`"));
    }
    if let Some(c) = name.chars().find(|c| *c == '/' || *c == ':' || c.is_whitespace()) {
        return Err(format!(
            "{what} `{name}` contains {c:?}, which Linux does not allow in interface names; use the NIC name shown by `ip link`"
        ));
    }
    Ok(())
}

fn check_peer_address(s: &str) -> Result<IpAddr, String> {
    let ip = parse_ip(s)?;
    if ip.is_unspecified() {
        return Err(format!("peer address {ip} is the unspecified address; use the neighbor's interface address"));
    }
    if ip.is_multicast() {
        return Err(format!("peer address {ip} is multicast; a BGP neighbor needs a unicast address"));
    }
    Ok(ip)
}

fn check_prefix(s: &str) -> Result<IpNet, String> {
    let prefix = s.parse::<IpNet>().map_err(|_| {
        if s.parse::<IpAddr>().is_ok() {
            let len = if s.contains(':') { 128 } else { 32 };
            format!("`{s}` has no prefix length; write it as `{s}/{len}` for a single address")
        } else {
            format!("`{s}` is not an IP prefix; write ADDRESS/LENGTH, e.g. 2001:db8:100::/64")
        }
    })?;
    let network = prefix.trunc();
    if network != prefix {
        return Err(format!("{prefix} has host bits set; did you mean {network}?"));
    }
    Ok(prefix)
}

fn check_vip(s: &str) -> Result<IpAddr, String> {
    let ip = parse_ip(s)?;
    let problem = if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_loopback() {
        "a loopback address, which traffic from the network never reaches"
    } else {
        return Ok(ip);
    };
    Err(format!("VIP {ip} is {problem}; use a unicast address this node announces, e.g. from [[bgp.announce]]"))
}

fn check_backend_address(s: &str) -> Result<IpAddr, String> {
    let ip = parse_ip(s)?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("backend address {ip} is not a unicast address; use the address the backend listens on"));
    }
    Ok(ip)
}

fn check_decap_address(s: &str) -> Result<IpAddr, String> {
    let ip = parse_ip(s)?;
    if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
        return Err(format!(
            "decap address {ip} is not a unicast address of this host's interfaces; use the address the load \
             balancer's tunnels are sent to (the backend's address in the service)"
        ));
    }
    Ok(ip)
}

fn check_port(port: i64) -> Result<u16, String> {
    match u16::try_from(port) {
        Ok(0) => Err("port 0 is not a usable port; use 1-65535".to_owned()),
        Ok(p) => Ok(p),
        Err(_) => Err(format!("port {port} is out of range; use 1-65535")),
    }
}

/// 0 is allowed: it drains the backend (no Maglev slots, so no new flows, while its datapath entry
/// and health checks stay for the flows it already has), as `ipvsadm -w 0` does.
fn check_weight(weight: i64) -> Result<u32, String> {
    u32::try_from(weight).map_err(|_| {
        format!(
            "weight {weight} is out of range; use 0-4294967295 (0 drains the backend: no new flows; omit it for the \
             default of 1)"
        )
    })
}

fn check_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err(format!("unknown protocol `{s}`; use \"tcp\" or \"udp\"")),
    }
}

fn check_mode(s: &str) -> Result<Mode, String> {
    match s {
        "dsr" => Ok(Mode::Dsr),
        "nat" => Ok(Mode::Nat),
        _ => Err(format!("unknown mode `{s}`; use \"dsr\" (direct server return) or \"nat\"")),
    }
}

/// NAT rewrites the destination in place, so the families must match. DSR encapsulates the
/// unchanged packet: an IPv4 packet fits in an IPv6 tunnel, but not the other way round.
fn check_family(vip: IpAddr, backend: IpAddr, mode: Mode) -> Result<(), String> {
    match (mode, vip, backend) {
        (Mode::Nat, IpAddr::V4(_), IpAddr::V6(_)) | (Mode::Nat, IpAddr::V6(_), IpAddr::V4(_)) => {
            Err(format!(
                "backend {backend} and VIP {vip} are different address families; mode \"nat\" rewrites the address in place, so use a backend of the VIP's family (or mode \"dsr\" for an IPv4 VIP)"
            ))
        }
        (Mode::Dsr, IpAddr::V6(_), IpAddr::V4(_)) => Err(format!(
            "backend {backend} is IPv4 but VIP {vip} is IPv6; mode \"dsr\" cannot tunnel IPv6 packets in IPv4, so use an IPv6 backend address"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("weight", "weight"), 0);
        assert_eq!(edit_distance("wieght", "weight"), 2);
        assert_eq!(edit_distance("routerid", "router_id"), 1);
        assert_eq!(edit_distance("", "asn"), 3);
    }

    #[test]
    fn suggests_only_close_keys() {
        let known = ["address", "port", "weight"];
        assert_eq!(closest_key("wieght", &known), Some("weight"));
        assert_eq!(closest_key("Port", &known), Some("port"));
        assert_eq!(closest_key("colour", &known), None);
    }

    #[test]
    fn asn_rules() {
        assert_eq!(check_asn(65101), Ok(65101));
        assert_eq!(check_asn(4_200_000_000), Ok(4_200_000_000));
        assert_eq!(check_asn(1), Ok(1));
        assert_eq!(check_asn(4_294_967_294), Ok(4_294_967_294));
        for bad in [0, 23456, 65535, 4_294_967_295, -1, 4_294_967_296] {
            let err = check_asn(bad).unwrap_err();
            assert!(err.contains(&bad.to_string()), "{err}");
            assert!(err.contains("64512-65534"), "{err}");
        }
    }

    #[test]
    fn family_rules_per_mode() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        let v6: IpAddr = "2001:db8::10".parse().unwrap();
        assert!(check_family(v4, v4, Mode::Nat).is_ok());
        assert!(check_family(v6, v6, Mode::Nat).is_ok());
        assert!(check_family(v4, v6, Mode::Nat).is_err());
        assert!(check_family(v6, v4, Mode::Nat).is_err());
        assert!(check_family(v4, v4, Mode::Dsr).is_ok());
        assert!(check_family(v6, v6, Mode::Dsr).is_ok());
        assert!(check_family(v4, v6, Mode::Dsr).is_ok());
        assert!(check_family(v6, v4, Mode::Dsr).is_err());
    }

    #[test]
    fn ifname_rules() {
        assert!(check_ifname("uplink", "eth0").is_ok());
        assert!(check_ifname("uplink", "enp3s0f1np1.100").is_ok());
        for bad in ["", "a234567890123456", "eth/0", "eth:0", "eth 0", ".", ".."] {
            assert!(check_ifname("uplink", bad).is_err(), "{bad:?} accepted");
        }
    }
}
