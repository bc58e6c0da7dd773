//! Service VIPs over BGP, end to end: a VIP is announced to the ToR (FRR) while its backend passes
//! the health check, withdrawn when no backend is healthy, and announced again when one recovers.
//! The backend is a TCP listener on a thread inside the backend's network namespace.

use std::time::{Duration, Instant};

use anyhow::Result;
use ferrule_tests::bgp::{BgpConfig, Family, Neighbor};
use ferrule_tests::{cmd, net, Ferrule, Frr, NetNs, TcpServer, TestDir};

const VIP: &str = "203.0.113.10/32";

/// The backend: accepts connections on 198.51.100.2:8080 and closes them, until dropped.
fn start_backend(ns: &NetNs) -> Result<TcpServer> {
    TcpServer::start(ns, "198.51.100.2:8080", |conn, _| drop(conn))
}

fn frr_has(frr: &Frr, prefix: &str) -> Result<bool> {
    let out = frr.vtysh(&[&format!("show bgp ipv4 unicast {prefix}")])?;
    Ok(!out.contains("Network not in table"))
}

#[test]
fn vip_follows_backend_health_on_the_tor() {
    if !ferrule_tests::privileged() {
        return;
    }
    let dir = TestDir::new("vip").unwrap();
    let node = NetNs::new("vipn").unwrap();
    let tor = NetNs::new("vipt").unwrap();
    let be = NetNs::new("vipb").unwrap();
    net::veth(&node, "tor0", &tor, "srv0").unwrap();
    net::add_addr(&node, "tor0", "192.0.2.1/24").unwrap();
    net::add_addr(&tor, "srv0", "192.0.2.2/24").unwrap();
    net::veth(&node, "be0", &be, "up0").unwrap();
    net::add_addr(&node, "be0", "198.51.100.1/30").unwrap();
    net::add_addr(&be, "up0", "198.51.100.2/30").unwrap();

    let name = format!("vip{}", std::process::id());
    let config = format!(
        "[node]\nname = \"{name}\"\nasn = 65101\nrouter_id = \"192.0.2.1\"\n\n\
         [[bgp.peers]]\naddress = \"192.0.2.2\"\nasn = 65000\nhold_time = 9\n\n\
         [[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nport = 80\nprotocol = \"tcp\"\nmode = \"nat\"\n\
         announce = \"local\"\n\
         health = {{ kind = \"tcp\", interval_ms = 200, timeout_ms = 200, rise = 1, fall = 2 }}\n\
         backends = [ {{ address = \"198.51.100.2\", port = 8080 }} ]\n"
    );
    let backend = start_backend(&be).unwrap();
    let mut ferrule = Ferrule::new(&node, dir.path(), &name, &config).unwrap();
    ferrule.start(&[]).unwrap();
    let neighbor = Neighbor::new("ferrule", "192.0.2.1".parse().unwrap(), 65101).families(&[Family::Ipv4Unicast]);
    let frr =
        Frr::start(&tor, dir.path(), &BgpConfig::new("192.0.2.2".parse().unwrap(), 65000).neighbor(neighbor)).unwrap();
    ferrule_tests::wait_established(&frr, "192.0.2.1".parse().unwrap(), Duration::from_secs(30)).unwrap();

    let wait = |ferrule: &Ferrule, want: bool, what: &str| {
        let started = Instant::now();
        cmd::poll_until(what, Duration::from_secs(15), Duration::from_millis(100), || Ok(frr_has(&frr, VIP)? == want))
            .unwrap_or_else(|e| panic!("{e:#}\nferrule log:\n{}", ferrule.log_tail()));
        started.elapsed()
    };
    let t = wait(&ferrule, true, "the VIP on the ToR while the backend is healthy");
    println!("healthy backend: expected {VIP} on the ToR, saw it after {t:.1?}");

    // The service is in the XDP load balancer's (pinned) maps, with its backend.
    let services = ferrule.show(&["lb", "services"]).unwrap();
    let web = &services[0];
    println!("show lb services: expected web installed with an id and a healthy backend with an id, saw {web}");
    assert!(web["id"].as_u64().is_some() && web["announced"] == true, "{web}");
    assert!(web["backends"][0]["id"].as_u64().is_some() && web["backends"][0]["healthy"] == true, "{web}");

    drop(backend);
    let t = wait(&ferrule, false, "the VIP withdrawn once the backend fails");
    println!("backend down: expected {VIP} withdrawn (fall 2 x 200 ms), saw it gone after {t:.1?}");
    let web = ferrule.show(&["lb", "services"]).unwrap()[0].clone();
    println!("show lb services: expected the backend unhealthy and the VIP not announced, saw {web}");
    assert!(web["announced"] == false && web["backends"][0]["healthy"] == false, "{web}");

    // A restart while the backend is down, its checks now 3 s apart: the backend map marks it
    // down, so it starts unhealthy, out of the table, the VIP not announced (before, every backend
    // started healthy: back in the table and the VIP announced until `fall` checks had failed).
    ferrule.stop().unwrap();
    let slow = config.replace("interval_ms = 200", "interval_ms = 3000");
    assert_ne!(slow, config);
    std::fs::write(dir.path().join(format!("{name}.toml")), slow).unwrap();
    ferrule.start(&[]).unwrap();
    let web = ferrule.show(&["lb", "services"]).unwrap()[0].clone();
    println!("after a restart with the backend down: expected it unhealthy and nothing announced at once, saw {web}");
    assert!(web["announced"] == false && web["backends"][0]["healthy"] == false, "{web}");
    ferrule_tests::wait_established(&frr, "192.0.2.1".parse().unwrap(), Duration::from_secs(30)).unwrap();
    for _ in 0..10 {
        assert!(!frr_has(&frr, VIP).unwrap(), "the VIP of a dead backend announced after a restart");
        std::thread::sleep(Duration::from_millis(100));
    }

    let _backend = start_backend(&be).unwrap();
    let t = wait(&ferrule, true, "the VIP announced again once the backend recovers");
    println!("backend back: expected {VIP} announced again (rise 1), saw it after {t:.1?}");
    ferrule.stop().unwrap();
}
