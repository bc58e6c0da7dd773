//! Behaviour of `parse`/`load_file` as a user sees it: accepted configs, and for each rule the
//! rejected value's field path, FILE:LINE:COL and message.

use std::path::Path;

use super::*;

const NODE: &str = r#"[node]
name = "node1"
asn = 65101
router_id = "192.0.2.11"
"#;

/// A valid config with one service, for tests that change one line of it.
const WEB: &str = r#"[node]
name = "node1"
asn = 65101
router_id = "192.0.2.11"

[[services]]
name = "web"
vip = "2001:db8:200::10"
port = 80
protocol = "tcp"
mode = "dsr"
backends = [ { address = "2001:db8:300::21", port = 80 } ]
"#;

fn errors(text: &str) -> Vec<ConfigError> {
    match parse("t.toml", text) {
        Ok(m) => panic!("accepted invalid config:\n{text}\nas {m:?}"),
        Err(e) => {
            assert!(!e.is_empty());
            e.errors
        }
    }
}

/// Exactly one error, or the test fails listing what was reported.
fn one_error(text: &str) -> ConfigError {
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "expected one error, got:\n{}", ConfigErrors { errors: errs.clone() });
    errs.into_iter().next().unwrap()
}

fn ok(text: &str) -> Model {
    parse("t.toml", text).unwrap_or_else(|e| panic!("rejected valid config:\n{e}\n---\n{text}"))
}

/// 1-based line and column where `needle` first occurs in `text` (`nth` = 0 for the first).
fn at(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text.match_indices(needle).nth(nth).unwrap_or_else(|| panic!("{needle:?} not in text")).0;
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn assert_error(e: &ConfigError, path: &str, pos: (usize, usize), message_part: &str) {
    assert_eq!(e.path, path, "{e}");
    assert_eq!((e.line, e.col), pos, "{e}");
    assert!(e.message.contains(message_part), "{e}\nexpected to contain: {message_part}");
    assert_eq!(e.source, "t.toml");
}

fn examples() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))
}

// ---- accepted configs -----------------------------------------------------------------------

#[test]
fn loads_full_example_file() {
    let (model, text) = load_file(&examples().join("node1.toml")).unwrap();
    assert!(text.contains("[node]"));
    assert_eq!(model.node.name, "node1");
    assert_eq!(model.node.asn, 65101);
    assert_eq!(model.node.router_id, "192.0.2.11".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(model.node.uplinks, vec!["eth0", "eth1"]);
    assert_eq!(model.bgp.peers.len(), 2);
    assert_eq!(model.bgp.peers[0].address, Some("2001:db8:1::1".parse::<std::net::IpAddr>().unwrap()));
    assert_eq!(model.bgp.announce[1].prefix, "198.51.100.0/24".parse::<ipnet::IpNet>().unwrap());
    let web = &model.services[0];
    assert_eq!((web.port, web.protocol, web.mode), (80, Protocol::Tcp, Mode::Dsr));
    assert_eq!(web.backends[0].weight, 2);
    assert_eq!(web.backends[1].weight, 1, "weight defaults to 1");
    let api = &model.services[2];
    assert_eq!(api.mode, Mode::Nat);
    assert_eq!(api.backends[0].port, 8443);
    assert_eq!(
        model.summary(),
        "node node1 AS65101 router-id 192.0.2.11: 2 uplinks, 2 BGP peers, 2 announced prefixes, 3 services (4 backends)"
    );
}

#[test]
fn three_mistakes_example_reports_exactly_three_errors_in_order() {
    let path = examples().join("three-mistakes.toml");
    let err = match load_file(&path) {
        Err(LoadError::Invalid(e)) => e,
        other => panic!("expected Invalid, got {other:?}"),
    };
    let got: Vec<(usize, usize, &str)> = err.iter().map(|e| (e.line, e.col, e.path.as_str())).collect();
    assert_eq!(
        got,
        vec![(8, 7, "node.asn"), (16, 10, "bgp.announce[0].prefix"), (24, 66, "services[0].backends[0].weight"),]
    );
    let file = path.display().to_string();
    assert!(err.errors.iter().all(|e| e.source == file));
    assert!(err.errors[1].message.contains("did you mean 2001:db8:100::/64?"));
    // The Display of the load error is exactly the error list.
    assert_eq!(LoadError::Invalid(err.clone()).to_string(), err.to_string());
}

#[test]
fn minimal_config_has_empty_bgp_services_and_uplinks() {
    let m = ok(NODE);
    assert!(m.node.uplinks.is_empty());
    assert_eq!(m.bgp, Bgp::default());
    assert!(m.services.is_empty());
    assert_eq!(
        m.summary(),
        "node node1 AS65101 router-id 192.0.2.11: 0 uplinks, 0 BGP peers, 0 announced prefixes, 0 services (0 backends)"
    );
}

#[test]
fn summary_uses_singular_for_one() {
    let text = format!(
        "{}\n[[bgp.peers]]\naddress = \"2001:db8:1::1\"\nasn = 65000\n[[bgp.announce]]\nprefix = \"2001:db8:100::/64\"\n",
        WEB.replace("[node]\n", "[node]\nuplinks = [\"eth0\"]\n")
    );
    let m = ok(&text);
    assert_eq!(
        m.summary(),
        "node node1 AS65101 router-id 192.0.2.11: 1 uplink, 1 BGP peer, 1 announced prefix, 1 service (1 backend)"
    );
}

#[test]
fn model_round_trips_through_json_and_toml() {
    let (model, _) = load_file(&examples().join("node1.toml")).unwrap();
    let json = serde_json::to_string(&model).unwrap();
    assert!(json.contains(r#""protocol":"udp""#), "{json}");
    assert!(json.contains(r#""mode":"nat""#), "{json}");
    let back: Model = serde_json::from_str(&json).unwrap();
    assert_eq!(back, model);

    // A model rendered as TOML passes the same validation, so an API taking JSON can reuse parse.
    let text = toml::to_string(&model).unwrap();
    assert_eq!(ok(&text), model);
}

#[test]
fn json_backend_weight_defaults_to_one() {
    let b: Backend = serde_json::from_str(r#"{"address":"2001:db8::1","port":80}"#).unwrap();
    assert_eq!(b.weight, 1);
}

// ---- error formatting -------------------------------------------------------------------------

#[test]
fn error_display_is_file_line_col_path_message() {
    let e = one_error(&NODE.replace("asn = 65101", "asn = 0"));
    assert_eq!(
        e.to_string(),
        "t.toml:3:7: node.asn: ASN 0 is reserved (RFC 7607); use a private ASN such as 64512-65534 or 4200000000-4294967294"
    );
}

#[test]
fn error_list_display_is_one_line_per_error_without_summary() {
    let text = NODE.replace("asn = 65101", "asn = 0").replace("192.0.2.11", "0.0.0.0");
    let errs = parse("t.toml", &text).unwrap_err();
    let shown = errs.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 2, "{shown}");
    assert!(lines[0].starts_with("t.toml:3:7: node.asn: "));
    assert!(lines[1].starts_with("t.toml:4:13: node.router_id: "));
    assert!(!shown.ends_with('\n'));
}

#[test]
fn unreadable_file_names_the_path() {
    let path = examples().join("does-not-exist.toml");
    let err = load_file(&path).unwrap_err();
    assert!(matches!(err, LoadError::Io { .. }));
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("cannot read config file {}: ", path.display())), "{msg}");
}

#[test]
fn source_name_is_used_in_errors() {
    let err = parse("PUT /v1/config", &NODE.replace("asn = 65101", "asn = 0")).unwrap_err();
    assert!(err.to_string().starts_with("PUT /v1/config:3:7: node.asn: "), "{err}");
}

// ---- syntax, type and unknown-key errors ------------------------------------------------------

#[test]
fn syntax_error_has_position_and_no_field() {
    let e = one_error("[node]\nname = \"node1\nasn = 1\n");
    assert_eq!(e.path, "");
    assert_eq!(e.line, 2, "{e}");
    assert!(e.to_string().starts_with("t.toml:2:"), "{e}");
    assert!(!e.to_string().contains(": : "), "{e}");
}

#[test]
fn duplicate_key_is_a_syntax_error_at_the_second_key() {
    let e = one_error(&NODE.replace("asn = 65101\n", "asn = 65101\nasn = 65102\n"));
    assert_eq!(e.line, 4, "{e}");
}

#[test]
fn wrong_type_names_field_and_position() {
    let text = NODE.replace("asn = 65101", "asn = \"65101\"");
    let e = one_error(&text);
    assert_error(&e, "node.asn", (3, 7), "expected an integer");
}

#[test]
fn wrong_type_inside_inline_table_names_the_nested_field() {
    let text = WEB.replace("port = 80 }", "port = \"eighty\" }");
    let e = one_error(&text);
    assert_error(&e, "services[0].backends[0].port", at(&text, "\"eighty\"", 0), "invalid type");
}

#[test]
fn unknown_keys_are_reported_at_the_key_with_a_suggestion() {
    let text = WEB.replace("router_id", "routerid").replace("port = 80 }", "port = 80, wieght = 2 }");
    let errs = errors(&text);
    // The misspelt router_id also makes router_id missing: both are reported, the missing one at
    // the [node] header.
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["node.router_id", "node.routerid", "services[0].backends[0].wieght"]);
    assert_error(&errs[0], "node.router_id", (1, 1), "missing `router_id`");
    assert_error(&errs[1], "node.routerid", (4, 1), "did you mean `router_id`?");
    assert_error(&errs[2], "services[0].backends[0].wieght", at(&text, "wieght", 0), "did you mean `weight`?");
}

#[test]
fn unknown_key_without_close_match_lists_allowed_keys() {
    let text = format!("{NODE}colour = \"blue\"\n");
    let e = one_error(&text);
    assert_error(&e, "node.colour", (5, 1), "keys allowed here: name, asn, router_id, uplinks");
}

#[test]
fn unknown_top_level_table_is_reported() {
    let text = format!("{NODE}\n[bfd]\ninterval = 300\n");
    let e = one_error(&text);
    assert_error(&e, "bfd", (6, 2), "unknown key `bfd`");
}

#[test]
fn unknown_keys_are_collected_with_validation_errors() {
    let text = WEB.replace("asn = 65101", "asn = 0\nfoo = 1").replace("port = 80\n", "port = 0\n");
    let errs = errors(&text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec!["node.asn", "node.foo", "services[0].port"]);
}

// ---- node -------------------------------------------------------------------------------------

#[test]
fn rejects_missing_node_table() {
    let e = one_error("[[bgp.peers]]\naddress = \"2001:db8:1::1\"\nasn = 65000\n");
    assert_error(&e, "node", (1, 1), "missing [node] table");
}

#[test]
fn missing_required_field_points_at_its_table() {
    let text = format!("# comment\n{}", NODE.replace("asn = 65101\n", ""));
    let e = one_error(&text);
    assert_error(&e, "node.asn", (2, 1), "missing `asn`; add e.g. `asn = 65101`");
}

#[test]
fn accepts_valid_node_names() {
    for name in ["node1", "rack-12.node_3", &"a".repeat(63)] {
        ok(&NODE.replace("\"node1\"", &format!("\"{name}\"")));
    }
}

#[test]
fn rejects_invalid_node_names() {
    for (name, why) in [
        ("", "must not be empty"),
        ("node/1", "contains '/'"),
        ("node 1", "contains ' '"),
        ("..", "not usable as a directory name"),
        (&"a".repeat(64), "use at most 63"),
    ] {
        let text = NODE.replace("\"node1\"", &format!("\"{name}\""));
        assert_error(&one_error(&text), "node.name", (2, 8), why);
    }
}

#[test]
fn rejects_reserved_node_asns() {
    for (asn, why) in [
        ("0", "RFC 7607"),
        ("23456", "AS_TRANS"),
        ("65535", "RFC 7300"),
        ("4294967295", "RFC 7300"),
        ("4294967296", "out of range"),
        ("-5", "out of range"),
    ] {
        let text = NODE.replace("65101", asn);
        assert_error(&one_error(&text), "node.asn", (3, 7), why);
    }
}

#[test]
fn accepts_four_byte_asn() {
    assert_eq!(ok(&NODE.replace("65101", "4200000001")).node.asn, 4_200_000_001);
}

#[test]
fn rejects_ipv6_router_id() {
    let text = NODE.replace("192.0.2.11", "2001:db8::11");
    assert_error(&one_error(&text), "node.router_id", (4, 13), "router_id must be an IPv4 address");
}

#[test]
fn rejects_zero_and_malformed_router_id() {
    let e = one_error(&NODE.replace("192.0.2.11", "0.0.0.0"));
    assert_error(&e, "node.router_id", (4, 13), "0.0.0.0 is not a valid BGP identifier");
    let e = one_error(&NODE.replace("192.0.2.11", "192.0.2"));
    assert_error(&e, "node.router_id", (4, 13), "is not an IP address");
}

#[test]
fn accepts_linux_interface_names_as_uplinks() {
    let text = format!("{NODE}uplinks = [\"eth0\", \"enp3s0f1np1\", \"bond0.100\"]\n");
    assert_eq!(ok(&text).node.uplinks.len(), 3);
}

#[test]
fn rejects_invalid_uplink_names() {
    for (name, why) in [
        ("", "must not be empty"),
        ("averyveryverylongif", "at most 15"),
        ("eth/0", "contains '/'"),
        ("eth 0", "contains ' '"),
    ] {
        let text = format!("{NODE}uplinks = [\"eth0\", \"{name}\"]\n");
        let e = one_error(&text);
        assert_error(&e, "node.uplinks[1]", at(&text, &format!("\"{name}\""), 0), why);
    }
}

#[test]
fn rejects_duplicate_uplink_pointing_at_first() {
    let text = format!("{NODE}uplinks = [\"eth0\", \"eth1\", \"eth0\"]\n");
    let e = one_error(&text);
    assert_error(&e, "node.uplinks[2]", (5, 28), "listed twice (first at t.toml:5:12)");
}

// ---- bgp --------------------------------------------------------------------------------------

fn with_peers(peers: &[(&str, &str)]) -> String {
    let mut text = NODE.to_owned();
    for (address, asn) in peers {
        text.push_str(&format!("\n[[bgp.peers]]\naddress = \"{address}\"\nasn = {asn}\n"));
    }
    text
}

#[test]
fn accepts_ipv4_and_ipv6_peers() {
    let m = ok(&with_peers(&[("2001:db8:1::1", "65000"), ("192.0.2.1", "4200000000")]));
    assert_eq!(m.bgp.peers[1].asn, 4_200_000_000);
}

#[test]
fn rejects_reserved_peer_asn() {
    for asn in ["0", "23456", "65535", "4294967295"] {
        let text = with_peers(&[("2001:db8:1::1", asn)]);
        assert_error(&one_error(&text), "bgp.peers[0].asn", (8, 7), asn);
    }
}

#[test]
fn rejects_duplicate_peer_address() {
    let text = with_peers(&[("2001:db8:1::1", "65000"), ("2001:db8:1::1", "65001")]);
    let e = one_error(&text);
    assert_error(&e, "bgp.peers[1].address", (11, 11), "peer 2001:db8:1::1 is already defined at t.toml:7:11");
}

#[test]
fn rejects_unspecified_multicast_and_malformed_peer_address() {
    for (address, why) in [
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("ff02::5", "multicast"),
        ("224.0.0.5", "multicast"),
        ("tor1", "is not an IP address"),
        ("2001:db8::/64", "is a prefix, not an address"),
    ] {
        let text = with_peers(&[(address, "65000")]);
        assert_error(&one_error(&text), "bgp.peers[0].address", (7, 11), why);
    }
}

#[test]
fn rejects_peer_without_asn() {
    let text = format!("{NODE}\n[[bgp.peers]]\naddress = \"2001:db8:1::1\"\n");
    assert_error(&one_error(&text), "bgp.peers[0].asn", (6, 1), "missing `asn`");
}

fn with_announce(prefixes: &[&str]) -> String {
    let mut text = NODE.to_owned();
    for p in prefixes {
        text.push_str(&format!("\n[[bgp.announce]]\nprefix = \"{p}\"\n"));
    }
    text
}

#[test]
fn accepts_ipv4_and_ipv6_prefixes() {
    let m = ok(&with_announce(&["2001:db8:100::/64", "198.51.100.0/24", "2001:db8::1/128"]));
    assert_eq!(m.bgp.announce.len(), 3);
}

#[test]
fn rejects_prefix_with_host_bits() {
    let e = one_error(&with_announce(&["2001:db8:100::1/64"]));
    assert_eq!(
        e.to_string(),
        "t.toml:7:10: bgp.announce[0].prefix: 2001:db8:100::1/64 has host bits set; did you mean 2001:db8:100::/64?"
    );
    let e = one_error(&with_announce(&["198.51.100.7/24"]));
    assert_error(&e, "bgp.announce[0].prefix", (7, 10), "did you mean 198.51.100.0/24?");
}

#[test]
fn rejects_duplicate_prefix() {
    let e = one_error(&with_announce(&["2001:db8:100::/64", "2001:db8:100:0::/64"]));
    assert_error(&e, "bgp.announce[1].prefix", (10, 10), "already announced at t.toml:7:10");
}

#[test]
fn rejects_prefix_without_length_or_malformed() {
    let e = one_error(&with_announce(&["2001:db8:100::1"]));
    assert_error(&e, "bgp.announce[0].prefix", (7, 10), "`2001:db8:100::1/128`");
    let e = one_error(&with_announce(&["2001:db8:100::/129"]));
    assert_error(&e, "bgp.announce[0].prefix", (7, 10), "not an IP prefix");
}

// ---- services ---------------------------------------------------------------------------------

#[test]
fn accepts_web_service() {
    let m = ok(WEB);
    let s = &m.services[0];
    assert_eq!(s.name, "web");
    assert_eq!(s.backends, vec![Backend { address: "2001:db8:300::21".parse().unwrap(), port: 80, weight: 1 }]);
}

#[test]
fn rejects_empty_and_duplicate_service_names() {
    let e = one_error(&WEB.replace("name = \"web\"", "name = \"\""));
    assert_error(&e, "services[0].name", (7, 8), "must not be empty");

    let second = WEB[WEB.find("[[services]]").unwrap()..].replace("port = 80\n", "port = 443\n");
    let text = format!("{WEB}\n{second}");
    let e = one_error(&text);
    assert_error(&e, "services[1].name", (15, 8), "`web` is already used at t.toml:7:8");
}

#[test]
fn rejects_duplicate_frontend_naming_the_other_service() {
    let second = WEB[WEB.find("[[services]]").unwrap()..].replace("\"web\"", "\"web2\"");
    let text = format!("{WEB}\n{second}");
    let e = one_error(&text);
    assert_eq!(
        e.to_string(),
        "t.toml:16:7: services[1].vip: duplicate VIP 2001:db8:200::10 port 80/tcp, also used by service `web` at t.toml:8:7; give this service a different VIP, port or protocol"
    );
}

#[test]
fn same_vip_and_port_with_other_protocol_is_allowed() {
    let second =
        WEB[WEB.find("[[services]]").unwrap()..].replace("\"web\"", "\"web-quic\"").replace("\"tcp\"", "\"udp\"");
    assert_eq!(ok(&format!("{WEB}\n{second}")).services.len(), 2);
}

#[test]
fn rejects_port_zero_and_out_of_range() {
    let e = one_error(&WEB.replace("port = 80\n", "port = 0\n"));
    assert_error(&e, "services[0].port", (9, 8), "port 0");
    let e = one_error(&WEB.replace("port = 80\n", "port = 65536\n"));
    assert_error(&e, "services[0].port", (9, 8), "out of range");
}

#[test]
fn rejects_unknown_protocol_and_mode() {
    let e = one_error(&WEB.replace("\"tcp\"", "\"sctp\""));
    assert_error(&e, "services[0].protocol", (10, 12), "use \"tcp\" or \"udp\"");
    let e = one_error(&WEB.replace("\"dsr\"", "\"tunnel\""));
    assert_error(&e, "services[0].mode", (11, 8), "use \"dsr\"");
}

#[test]
fn rejects_service_without_backends() {
    let text = WEB.replace("backends = [ { address = \"2001:db8:300::21\", port = 80 } ]\n", "");
    let e = one_error(&text);
    assert_error(&e, "services[0].backends", (6, 1), "at least one backend");

    let text = WEB.replace("[ { address = \"2001:db8:300::21\", port = 80 } ]", "[]");
    let e = one_error(&text);
    assert_error(&e, "services[0].backends", (12, 12), "at least one backend");
}

#[test]
fn accepts_backend_weight_zero_as_draining() {
    let text =
        WEB.replace("port = 80 } ]", "port = 80, weight = 0 },\n  { address = \"2001:db8:300::22\", port = 80 } ]");
    let weights: Vec<u32> = ok(&text).services[0].backends.iter().map(|b| b.weight).collect();
    assert_eq!(weights, [0, 1]);
}

#[test]
fn accepts_a_service_whose_backends_all_have_weight_zero() {
    // An operator taking the whole service out of rotation: accepted, unlike a service without backends.
    let text = WEB.replace(
        "port = 80 } ]",
        "port = 80, weight = 0 },\n  { address = \"2001:db8:300::22\", port = 80, weight = 0 } ]",
    );
    let model = ok(&text);
    assert!(model.services[0].backends.iter().all(|b| b.weight == 0), "{model:?}");
}

#[test]
fn rejects_negative_and_out_of_range_weights_where_they_are() {
    for bad in ["-1", "4294967296", "-9223372036854775808"] {
        let text = WEB.replace("port = 80 }", &format!("port = 80, weight = {bad} }}"));
        let e = one_error(&text);
        assert_error(&e, "services[0].backends[0].weight", at(&text, bad, 0), &format!("weight {bad} is out of range"));
        assert!(e.message.contains("use 0-4294967295") && e.message.contains("0 drains"), "{e}");
    }
}

#[test]
fn accepts_explicit_backend_weight() {
    let text = WEB.replace("port = 80 }", "port = 80, weight = 7 }");
    assert_eq!(ok(&text).services[0].backends[0].weight, 7);
}

#[test]
fn rejects_backend_port_zero() {
    let text = WEB.replace("port = 80 }", "port = 0 }");
    let e = one_error(&text);
    assert_error(&e, "services[0].backends[0].port", at(&text, "0 }", 0), "port 0");
}

#[test]
fn rejects_duplicate_backend_in_a_service() {
    let text =
        WEB.replace("port = 80 } ]", "port = 80 },\n  { address = \"2001:db8:300::21\", port = 80, weight = 2 } ]");
    let e = one_error(&text);
    assert_error(
        &e,
        "services[0].backends[1].address",
        (13, 15),
        "backend [2001:db8:300::21]:80 is already listed at t.toml:12:26",
    );
}

#[test]
fn same_backend_address_on_other_port_is_allowed() {
    let text = WEB.replace("port = 80 } ]", "port = 80 }, { address = \"2001:db8:300::21\", port = 8080 } ]");
    assert_eq!(ok(&text).services[0].backends.len(), 2);
}

#[test]
fn rejects_unusable_vips() {
    for (vip, why) in [
        ("::", "unspecified"),
        ("0.0.0.0", "unspecified"),
        ("ff0e::1", "multicast"),
        ("239.1.1.1", "multicast"),
        ("::1", "loopback"),
        ("127.0.0.1", "loopback"),
        ("web.example", "not an IP address"),
    ] {
        // Keep the backend family compatible so only the VIP rule fires.
        let text = WEB.replace("2001:db8:200::10", vip);
        assert_error(&one_error(&text), "services[0].vip", (8, 7), why);
    }
}

fn service(vip: &str, mode: &str, backend: &str) -> String {
    WEB.replace("2001:db8:200::10", vip).replace("\"dsr\"", &format!("\"{mode}\"")).replace("2001:db8:300::21", backend)
}

#[test]
fn nat_requires_backend_in_vip_family() {
    ok(&service("198.51.100.10", "nat", "203.0.113.21"));
    ok(&service("2001:db8:200::10", "nat", "2001:db8:300::21"));
    let text = service("198.51.100.10", "nat", "2001:db8:300::21");
    assert_error(&one_error(&text), "services[0].backends[0].address", (12, 26), "different address families");
    let text = service("2001:db8:200::10", "nat", "203.0.113.21");
    assert_error(&one_error(&text), "services[0].backends[0].address", (12, 26), "different address families");
}

#[test]
fn dsr_allows_ipv4_vip_over_ipv6_backend_but_not_the_reverse() {
    ok(&service("198.51.100.10", "dsr", "2001:db8:300::21"));
    ok(&service("198.51.100.10", "dsr", "203.0.113.21"));
    let text = service("2001:db8:200::10", "dsr", "203.0.113.21");
    assert_error(&one_error(&text), "services[0].backends[0].address", (12, 26), "use an IPv6 backend address");
}

#[test]
fn rejects_multicast_backend() {
    let text = service("2001:db8:200::10", "dsr", "ff02::1");
    assert_error(&one_error(&text), "services[0].backends[0].address", (12, 26), "not a unicast address");
}

#[test]
fn backend_as_array_of_tables_is_located() {
    let text = WEB.replace(
        "backends = [ { address = \"2001:db8:300::21\", port = 80 } ]\n",
        "\n[[services.backends]]\naddress = \"2001:db8:300::21\"\nport = 80\nweight = -3\n",
    );
    let e = one_error(&text);
    assert_error(&e, "services[0].backends[0].weight", (16, 10), "weight -3");
}

#[test]
fn collects_errors_from_every_section_in_file_order() {
    let text = r#"[node]
name = "node 1"
asn = 23456
router_id = "2001:db8::1"
uplinks = ["eth0", "eth0"]

[[bgp.peers]]
address = "ff02::1"
asn = 0

[[bgp.announce]]
prefix = "198.51.100.1/24"

[[services]]
name = "web"
vip = "2001:db8:200::10"
port = 0
protocol = "tcp"
mode = "nat"
backends = [ { address = "192.0.2.1", port = 80, weight = -1 } ]
"#;
    let errs = errors(text);
    let got: Vec<(usize, &str)> = errs.iter().map(|e| (e.line, e.path.as_str())).collect();
    assert_eq!(
        got,
        vec![
            (2, "node.name"),
            (3, "node.asn"),
            (4, "node.router_id"),
            (5, "node.uplinks[1]"),
            (8, "bgp.peers[0].address"),
            (9, "bgp.peers[0].asn"),
            (12, "bgp.announce[0].prefix"),
            (17, "services[0].port"),
            (20, "services[0].backends[0].address"),
            (20, "services[0].backends[0].weight"),
        ]
    );
}

const BGP_FULL: &str = r#"[node]
name = "node1"
asn = 65101
router_id = "192.0.2.11"

[bgp]
listen_port = 1179

[[bgp.peers]]
address = "2001:db8:1::1"
asn = 65000
port = 1179
passive = true
hold_time = 9
import = ["0.0.0.0/0", "::/0", "203.0.113.0/24 le 32"]
max_prefix = { limit = 1000, action = "warn" }

[[bgp.announce]]
prefix = "2001:db8:100::/64"
communities = ["65101:100", "no-export"]
large_communities = ["65101:1:2"]
med = 10
local_pref = 200
"#;

#[test]
fn accepts_every_bgp_key_and_keeps_defaults_when_absent() {
    let m = ok(BGP_FULL);
    assert_eq!(m.bgp.listen_port, 1179);
    let peer = &m.bgp.peers[0];
    assert_eq!((peer.options.port, peer.options.passive, peer.options.hold_time), (1179, true, 9));
    let import: Vec<String> = peer.options.import.iter().map(ToString::to_string).collect();
    assert_eq!(import, ["0.0.0.0/0", "::/0", "203.0.113.0/24 le 32"]);
    assert_eq!(peer.options.max_prefix, Some(MaxPrefix { limit: 1000, action: MaxPrefixAction::Warn }));
    let a = &m.bgp.announce[0];
    assert_eq!(a.communities, vec!["65101:100".parse().unwrap(), "no-export".parse().unwrap()]);
    assert_eq!((a.med, a.local_pref, a.large_communities[0].to_string().as_str()), (Some(10), Some(200), "65101:1:2"));

    let defaults = ok(&with_peers(&[("2001:db8:1::1", "65000")]));
    let peer = &defaults.bgp.peers[0];
    assert_eq!(defaults.bgp.listen_port, 179);
    assert_eq!(
        (
            peer.options.port,
            peer.options.passive,
            peer.options.hold_time,
            peer.options.import.is_empty(),
            peer.options.max_prefix
        ),
        (179, false, 90, true, None)
    );
}

#[test]
fn bgp_keys_round_trip_through_json() {
    let m = ok(BGP_FULL);
    let json = serde_json::to_string(&m).unwrap();
    assert!(json.contains("\"203.0.113.0/24 le 32\"") && json.contains("\"no-export\""), "{json}");
    assert_eq!(serde_json::from_str::<Model>(&json).unwrap(), m);
}

#[test]
fn rejects_bad_bgp_values_each_at_its_location() {
    let text = BGP_FULL
        .replace("hold_time = 9", "hold_time = 2")
        .replace("\"203.0.113.0/24 le 32\"", "\"203.0.113.0/24 le 33\"")
        .replace("action = \"warn\"", "action = \"drop\"")
        .replace("\"65101:100\"", "\"65101:70000\"")
        .replace("med = 10", "med = -1");
    let errs = errors(&text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "bgp.peers[0].hold_time",
            "bgp.peers[0].import[2]",
            "bgp.peers[0].max_prefix.action",
            "bgp.announce[0].communities[0]",
            "bgp.announce[0].med"
        ],
        "{}",
        ConfigErrors { errors: errs.clone() }
    );
    assert_error(&errs[0], "bgp.peers[0].hold_time", at(&text, "2\nimport", 0), "use 0 to disable keepalives");
    assert_error(&errs[1], "bgp.peers[0].import[2]", at(&text, "\"203.0.113.0/24 le 33\"", 0), "le 33");
    assert!(errs[2].message.contains("\"warn\" or \"teardown\""), "{}", errs[2]);
}

#[test]
fn unknown_peer_key_suggests_the_bgp_key() {
    let e = one_error(&with_peers(&[("2001:db8:1::1", "65000")]).replace("asn = 65000", "asn = 65000\nhold_tme = 3"));
    assert!(e.message.contains("did you mean `hold_time`"), "{e}");
}

#[test]
fn service_health_announce_and_table_size_default_and_parse() {
    let m = ok(WEB);
    let web = &m.services[0];
    assert_eq!((web.health.clone(), web.announce, web.maglev_table_size), (None, AnnounceWhen::Healthy, 65537));

    let text = WEB.replace(
        "mode = \"dsr\"",
        "mode = \"dsr\"\nannounce = \"local\"\nmaglev_table_size = 655373\nhealth = { kind = \"http\", interval_ms = 200, rise = 3, fall = 2, path = \"/healthz\" }",
    );
    let web = ok(&text).services.remove(0);
    assert_eq!(web.announce, AnnounceWhen::Local);
    assert_eq!(web.maglev_table_size, 655373);
    assert_eq!(
        web.health,
        Some(HealthCheck {
            kind: HealthKind::Http,
            interval_ms: 200,
            timeout_ms: 1000,
            rise: 3,
            fall: 2,
            path: Some("/healthz".into()),
            expect_status: Some(200)
        })
    );
}

#[test]
fn rejects_bad_health_announce_and_table_size() {
    let text = WEB.replace(
        "mode = \"dsr\"",
        "mode = \"dsr\"\nannounce = \"always\"\nmaglev_table_size = 65536\nhealth = { kind = \"tcp\", interval_ms = 5, path = \"/x\" }",
    );
    let errs = errors(&text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "services[0].announce",
            "services[0].maglev_table_size",
            "services[0].health.interval_ms",
            "services[0].health.path"
        ],
        "{}",
        ConfigErrors { errors: errs.clone() }
    );
    assert!(errs[1].message.contains("must be a prime"), "{}", errs[1]);
    assert!(errs[3].message.contains("kind = \"http\" only"), "{}", errs[3]);

    let small = WEB.replace("mode = \"dsr\"", "mode = \"dsr\"\nmaglev_table_size = 7");
    assert!(one_error(&small).message.contains("too small for 1 backends"));
}

#[test]
fn snat_ports_default_and_bounds() {
    assert_eq!(ok(WEB).node.snat_ports, PortRange { first: 10_000, last: 32_767 });
    let with = |v: &str| {
        WEB.replace("router_id = \"192.0.2.11\"", &format!("router_id = \"192.0.2.11\"\nsnat_ports = \"{v}\""))
    };
    assert_eq!(ok(&with("20000-29999")).node.snat_ports, PortRange { first: 20_000, last: 29_999 });
    assert_eq!(ok(&with("1024-1279")).node.snat_ports.to_string(), "1024-1279");
    for (value, needle) in [
        ("20000", "not a port range"),
        ("20000-70000", "not a port range"),
        ("500-2000", "below 1024"),
        ("30000-20000", "ends before it starts"),
        ("20000-20100", "has 101 ports"),
    ] {
        let e = one_error(&with(value));
        assert_eq!(e.path, "node.snat_ports", "{value}");
        assert!(e.message.contains(needle), "{value}: {e}");
    }
    let typo = WEB.replace("router_id = \"192.0.2.11\"", "router_id = \"192.0.2.11\"\nsnat_port = \"20000-29999\"");
    assert!(one_error(&typo).message.contains("did you mean `snat_ports`?"), "{}", one_error(&typo));
}

#[test]
fn table_size_and_backend_count_stay_within_what_the_datapath_holds() {
    let sized = |n: u32| WEB.replace("mode = \"dsr\"", &format!("mode = \"dsr\"\nmaglev_table_size = {n}"));
    assert_eq!(ok(&sized(MAX_MAGLEV_TABLE_SIZE)).services[0].maglev_table_size, 1_048_573);
    // The next prime, 1,048,583, is over the datapath's 2^20 slots.
    let e = one_error(&sized(1_048_583));
    assert!(e.message.contains("between 7 and 1048573"), "{e}");

    // 328 services of 100 backends each (their tables 10,007 slots): 32,800 distinct backends.
    let mut text = String::from("[node]\nname = \"node1\"\nasn = 65101\nrouter_id = \"192.0.2.11\"\n");
    for i in 0..328u32 {
        text.push_str(&format!(
            "[[services]]\nname = \"s{i}\"\nvip = \"2001:db8:200::{i:x}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\nmaglev_table_size = 10007\nbackends = ["
        ));
        for j in 0..100u32 {
            let n = i * 100 + j;
            text.push_str(&format!("{{ address = \"2001:db8:300::{:x}:{:x}\", port = 80 }},", n >> 16, n & 0xffff));
        }
        text.push_str("]\n");
    }
    let e = one_error(&text);
    assert_eq!(e.path, "services");
    assert!(e.message.contains("32800 distinct backends") && e.message.contains("32767"), "{e}");
    // Shared backends count once: the same 100 behind every service are well within it.
    let shared: String = text
        .lines()
        .map(|l| {
            if l.starts_with("backends") {
                "backends = [ { address = \"2001:db8:300::21\", port = 80 } ]".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(ok(&shared).services.len(), 328);
}

/// Inputs the fuzzer found that made toml_edit 0.24 panic while locating errors (fixed by 0.25).
#[test]
fn malformed_documents_found_by_fuzzing_are_rejected_without_panic() {
    for text in ["==00\n[..S", "==00\n[.,S", "a=1\n[a.b]\n"] {
        let result = std::panic::catch_unwind(|| parse("fuzz.toml", text));
        let errors = result.expect("parse must not panic").expect_err("not a valid config");
        assert!(errors.errors.iter().all(|e| e.line >= 1 && e.col >= 1), "{errors}");
    }
}

#[test]
fn import_rules_parse_and_bad_ones_are_located() {
    let base = with_peers(&[("192.0.2.1", "65000")]);
    let good = format!(
        "{base}import_rules = [ {{ as_path_contains = 64666, action = \"reject\" }}, {{ origin_as = 65010, community = \"65000:1\", action = \"local_pref\", value = 200 }} ]\n"
    );
    let rules = ok(&good).bgp.peers[0].options.import_rules.clone();
    assert_eq!(
        rules[0],
        ImportRule {
            as_path_contains: Some(64666),
            origin_as: None,
            community: None,
            large_community: None,
            action: ImportAction::Reject
        }
    );
    assert_eq!(rules[1].action, ImportAction::LocalPref(200));
    let json = serde_json::to_string(&rules[1]).unwrap();
    assert!(json.contains("\"action\":\"local_pref\"") && json.contains("\"value\":200"), "{json}");

    let bad = format!(
        "{base}import_rules = [ {{ action = \"reject\" }}, {{ origin_as = 65010, action = \"local_pref\" }}, {{ community = \"x\", action = \"reject\" }}, {{ origin_as = 1, action = \"drop\" }} ]\n"
    );
    let errs = errors(&bad);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "bgp.peers[0].import_rules[0]",
            "bgp.peers[0].import_rules[1].value",
            "bgp.peers[0].import_rules[2].community",
            "bgp.peers[0].import_rules[3].action"
        ],
        "{}",
        ConfigErrors { errors: errs.clone() }
    );
}

// ---- fabric peering: unnumbered, BFD, MD5, graceful restart, listen ranges ----------------------

#[test]
fn unnumbered_peer_names_an_interface_and_fabric_options_parse() {
    let text = format!(
        "{NODE}[[bgp.peers]]\ninterface = \"eth0\"\nasn = 65000\nbfd = {{ interval_ms = 100, multiplier = 3 }}\n\
         password = \"s3cret-key\"\ngraceful_restart = {{ restart_time_s = 90 }}\n\
         [[bgp.peers]]\naddress = \"fe80::1\"\ninterface = \"eth1\"\nasn = 65000\nbfd = {{ interval_ms = 50 }}\n\
         graceful_restart = {{}}\n"
    );
    let model = ok(&text);
    let (a, b) = (&model.bgp.peers[0], &model.bgp.peers[1]);
    assert_eq!((a.address, a.interface.as_deref(), a.name()), (None, Some("eth0"), "eth0".to_string()));
    assert_eq!(a.options.bfd, Some(Bfd { interval_ms: 100, multiplier: 3 }));
    assert_eq!(a.options.password.as_ref().map(Password::expose), Some("s3cret-key"));
    assert_eq!(a.options.graceful_restart, Some(GracefulRestart { restart_time_s: 90 }));
    assert_eq!((b.address, b.interface.as_deref()), (Some("fe80::1".parse().unwrap()), Some("eth1")));
    assert_eq!(b.options.bfd, Some(Bfd { interval_ms: 50, multiplier: 3 }), "multiplier defaults to 3");
    assert_eq!(b.options.graceful_restart, Some(GracefulRestart { restart_time_s: 120 }), "restart time defaults");
}

#[test]
fn password_never_appears_in_debug_json_or_errors() {
    let text = format!("{NODE}[[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\npassword = \"s3cret-key\"\n");
    let model = ok(&text);
    let debug = format!("{model:?}");
    let json = serde_json::to_string(&model).unwrap();
    assert!(!debug.contains("s3cret") && debug.contains("<redacted>"), "{debug}");
    assert!(!json.contains("s3cret") && json.contains("\"password\":\"<redacted>\""), "{json}");

    let long = "k".repeat(81);
    let text = format!("{NODE}[[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\npassword = \"{long}\"\n");
    let e = one_error(&text);
    assert_error(&e, "bgp.peers[0].password", at(&text, &format!("\"{long}"), 0), "at most 80 bytes");
    assert!(!e.to_string().contains(&long), "{e}");
}

#[test]
fn peer_identity_mistakes_are_explained() {
    let cases = [
        ("asn = 65000\n", "bgp.peers[0]", "needs `address`"),
        ("address = \"192.0.2.1\"\ninterface = \"eth0\"\nasn = 65000\n", "bgp.peers[0].interface", "not both"),
        ("address = \"fe80::1\"\nasn = 65000\n", "bgp.peers[0].address", "add `interface"),
        ("interface = \"eth/0\"\nasn = 65000\n", "bgp.peers[0].interface", "interface `eth/0`"),
    ];
    for (peer, path, message) in cases {
        let text = format!("{NODE}[[bgp.peers]]\n{peer}");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{peer}: {}", ConfigErrors { errors: errs.clone() });
        assert_eq!(errs[0].path, path, "{}", errs[0]);
        assert!(errs[0].message.contains(message), "{peer}: {}", errs[0]);
    }
    let dup =
        format!("{NODE}[[bgp.peers]]\ninterface = \"eth0\"\nasn = 1\n[[bgp.peers]]\ninterface = \"eth0\"\nasn = 2\n");
    let e = one_error(&dup);
    assert_error(&e, "bgp.peers[1].interface", at(&dup, "\"eth0\"", 1), "already defined at t.toml:");
}

/// One link-local address on two links is two peers (two ToRs may both use fe80::1), with one
/// TCP MD5 password between them: the listening socket keys by address.
#[test]
fn one_link_local_address_on_two_links_is_two_peers_with_one_password() {
    let peer = |iface: &str, password: &str| {
        format!("[[bgp.peers]]\naddress = \"fe80::1\"\ninterface = \"{iface}\"\nasn = 65001\n{password}")
    };
    let text = format!("{NODE}{}{}", peer("eth0", "password = \"s3cret\"\n"), peer("eth1", "password = \"s3cret\"\n"));
    let model = ok(&text);
    let found: Vec<_> = model.bgp.peers.iter().map(|p| (p.address, p.interface.clone())).collect();
    let ll: std::net::IpAddr = "fe80::1".parse().unwrap();
    assert_eq!(found, [(Some(ll), Some("eth0".into())), (Some(ll), Some("eth1".into()))]);

    for second in ["password = \"other\"\n", ""] {
        let text = format!("{NODE}{}{}", peer("eth0", "password = \"s3cret\"\n"), peer("eth1", second));
        let e = one_error(&text);
        assert_eq!(e.path, "bgp.peers[1].password", "{e}");
        assert!(e.message.contains("one key per address") && e.message.contains("t.toml:"), "{e}");
    }
    let same_link = format!("{NODE}{}{}", peer("eth0", ""), peer("eth0", ""));
    assert!(one_error(&same_link).message.contains("already defined"));
}

#[test]
fn bfd_and_graceful_restart_ranges_are_checked() {
    let cases = [
        ("bfd = { interval_ms = 5 }", "bgp.peers[0].bfd.interval_ms", "10 to 60000"),
        ("bfd = { interval_ms = 100, multiplier = 0 }", "bgp.peers[0].bfd.multiplier", "1 to 255"),
        ("bfd = { multiplier = 3 }", "bgp.peers[0].bfd.interval_ms", "missing `interval_ms`"),
        ("bfd = { interval_ms = 100, multipler = 3 }", "bgp.peers[0].bfd.multipler", "multiplier"),
        ("graceful_restart = { restart_time_s = 4096 }", "bgp.peers[0].graceful_restart.restart_time_s", "4095"),
    ];
    for (line, path, message) in cases {
        let text = format!("{NODE}[[bgp.peers]]\naddress = \"192.0.2.1\"\nasn = 65000\n{line}\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{line}: {}", ConfigErrors { errors: errs.clone() });
        assert_eq!(errs[0].path, path, "{}", errs[0]);
        assert!(errs[0].message.contains(message), "{line}: {}", errs[0]);
    }
}

#[test]
fn listen_ranges_take_the_peer_template_keys() {
    let text = format!(
        "{NODE}[[bgp.listen]]\nrange = \"2001:db8:500::/64\"\nasn = 65200\nlimit = 20\nimport = [\"2001:db8:500::/48 le 128\"]\n\
         bfd = {{ interval_ms = 300 }}\n[[bgp.listen]]\nrange = \"198.51.100.0/24\"\nasn = 65201\n"
    );
    let model = ok(&text);
    let l = &model.bgp.listen;
    assert_eq!((l[0].range.to_string(), l[0].asn, l[0].limit), ("2001:db8:500::/64".into(), 65200, 20));
    assert!(l[0].options.passive, "accepted sessions are passive");
    assert_eq!(l[0].options.import.len(), 1);
    assert_eq!((l[1].limit, l[1].options.bfd), (100, None), "default limit");

    let cases = [
        ("range = \"2001:db8:500::1/64\"\nasn = 1", "bgp.listen[0].range", "host bits"),
        ("asn = 1", "bgp.listen[0].range", "missing `range`"),
        ("range = \"2001:db8:500::/64\"\nasn = 1\nport = 1179", "bgp.listen[0].port", "unknown key"),
        ("range = \"2001:db8:500::/64\"\nasn = 1\nlimit = 0", "bgp.listen[0].limit", "1 to 10000"),
    ];
    for (body, path, message) in cases {
        let text = format!("{NODE}[[bgp.listen]]\n{body}\n");
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{body}: {}", ConfigErrors { errors: errs.clone() });
        assert_eq!(errs[0].path, path, "{}", errs[0]);
        assert!(errs[0].message.contains(message), "{body}: {}", errs[0]);
    }
}

#[test]
fn fabric_example_parses_with_unnumbered_peers_bfd_gr_md5_and_a_listen_range() {
    let (model, _) = load_file(&examples().join("fabric.toml")).unwrap();
    let interfaces: Vec<_> = model.bgp.peers.iter().map(|p| p.interface.as_deref()).collect();
    assert_eq!(interfaces, [Some("tor1"), Some("tor2")]);
    assert!(model.bgp.peers.iter().all(|p| p.options.bfd.is_some() && p.options.graceful_restart.is_some()));
    assert!(model.bgp.peers[1].options.password.is_some());
    assert_eq!(model.bgp.listen.len(), 1);
}

// ---- [decap]: this node as a DSR backend --------------------------------------------------------

#[test]
fn decap_section_is_optional_and_parsed_when_present() {
    assert!(ok(NODE).decap.is_empty());
    let text = format!("{NODE}\n[decap]\ninterfaces = [\"eth0\", \"bond0.100\"]\naddresses = [\"198.51.100.2\", \"2001:db8:300::21\"]\n");
    let model = ok(&text);
    assert_eq!(model.decap.interfaces, vec!["eth0", "bond0.100"]);
    assert_eq!(
        model.decap.addresses,
        vec!["198.51.100.2".parse::<std::net::IpAddr>().unwrap(), "2001:db8:300::21".parse().unwrap()]
    );
    let before = ok(NODE);
    assert!(diff(&before, &model).decap_changed);
    assert!(!diff(&model, &model).decap_changed);
}

#[test]
fn decap_rejects_bad_interfaces_and_addresses_at_their_place() {
    for (body, path, needle, nth, message) in [
        (
            "interfaces = [\"eth0\", \"eth0\"]\naddresses = [\"198.51.100.2\"]",
            "decap.interfaces[1]",
            "\"eth0\"",
            1,
            "listed twice",
        ),
        (
            "interfaces = [\"eth0:1\"]\naddresses = [\"198.51.100.2\"]",
            "decap.interfaces[0]",
            "\"eth0:1\"",
            0,
            "interface",
        ),
        (
            "interfaces = [\"eth0\"]\naddresses = [\"127.0.0.1\"]",
            "decap.addresses[0]",
            "\"127.0.0.1\"",
            0,
            "not a unicast address",
        ),
        (
            "interfaces = [\"eth0\"]\naddresses = [\"ff02::1\"]",
            "decap.addresses[0]",
            "\"ff02::1\"",
            0,
            "not a unicast address",
        ),
        (
            "interfaces = [\"eth0\"]\naddresses = [\"198.51.100.0/24\"]",
            "decap.addresses[0]",
            "\"198.51.100.0/24\"",
            0,
            "is a prefix",
        ),
        (
            "interfaces = [\"eth0\"]\naddresses = [\"2001:db8::1\", \"2001:db8:0::1\"]",
            "decap.addresses[1]",
            "\"2001:db8:0::1\"",
            0,
            "listed twice",
        ),
    ] {
        let text = format!("{NODE}\n[decap]\n{body}\n");
        let e = one_error(&text);
        assert_error(&e, path, at(&text, needle, nth), message);
    }
    let text = format!("{NODE}\n[decap]\ninterfaces = [\"eth0\"]\n");
    let e = one_error(&text);
    assert_eq!(e.path, "decap", "{e}");
    assert!(e.message.contains("no `addresses`"), "{e}");
    let text = format!("{NODE}\n[decap]\naddresses = [\"198.51.100.2\"]\n");
    assert!(one_error(&text).message.contains("no `interfaces`"));
    let text = format!("{NODE}\n[decap]\ninterface = [\"eth0\"]\naddresses = [\"198.51.100.2\"]\n");
    let errs = errors(&text);
    assert!(errs.iter().any(|e| e.path == "decap.interface" && e.message.contains("interfaces")), "{errs:?}");
}
