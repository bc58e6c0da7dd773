//! Maglev figures: table build time, and the share of flows (slots) remapped when one backend is
//! removed or added, each beside a baseline from the same run. Build times are compared with
//! filling the same table by `hash(slot) % N` (the cheapest table that spreads flows at all);
//! remapping is compared with the ideal 1/N and with that modulo table, which remaps most flows.
//!
//! Run: `cargo bench -p ferrule-xdp-lb`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use ferrule_config::{AnnounceWhen, Backend, Mode, Protocol, Service};
use ferrule_xdp_lb::maglev::{build_table, MaglevBackend};
use ferrule_xdp_lb::{
    plan, plan_with, write_isolating, BackendHealth, HealthView, LbOp, LbState, ServiceKey, TableCache, WriteStop,
};

fn backends(n: u32) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            id: i + 1,
            address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x300, 0, 0, 0, (i >> 16) as u16, i as u16)),
            port: 8080,
            weight: 1,
        })
        .collect()
}

/// Baseline table: slot s goes to backend (mix(s) % N): every slot's owner depends on N.
fn modulo_table(backends: &[MaglevBackend], size: u32) -> Vec<u32> {
    let n = backends.len() as u64;
    (0..u64::from(size))
        .map(|s| {
            let mut z = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            backends[((z ^ (z >> 31)) % n) as usize].id
        })
        .collect()
}

/// Median of `runs` timings of `f`.
fn median_time(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn changed(a: &[u32], b: &[u32]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

fn main() {
    println!("Maglev table build (median of runs; baseline = modulo table of the same size)");
    println!("{:>8} {:>9} {:>12} {:>10} {:>12} {:>8}", "entries", "backends", "maglev", "ns/entry", "modulo", "ratio");
    for size in [65537u32, 655373] {
        for n in [10u32, 100, 1000] {
            let set = backends(n);
            let runs = if size > 100_000 { 5 } else { 11 };
            let maglev = median_time(runs, || {
                black_box(build_table(black_box(&set), size).unwrap());
            });
            let modulo = median_time(runs, || {
                black_box(modulo_table(black_box(&set), size));
            });
            println!(
                "{size:>8} {n:>9} {:>9.2} ms {:>10.1} {:>9.2} ms {:>7.1}x",
                maglev.as_secs_f64() * 1e3,
                maglev.as_secs_f64() * 1e9 / f64::from(size),
                modulo.as_secs_f64() * 1e3,
                maglev.as_secs_f64() / modulo.as_secs_f64(),
            );
        }
    }

    for size in [65537u32, 655373] {
        println!();
        println!("Flows remapped when one of N backends is removed ({size} entries; ideal = 1/N)");
        println!(
            "{:>5} {:>9} {:>9} {:>13} {:>9} {:>13}",
            "N", "ideal", "maglev", "maglev/ideal", "modulo", "modulo/ideal"
        );
        for n in [2u32, 5, 10, 50, 100] {
            let all = backends(n);
            // Remove a backend from the middle of the key order, so neither neighbour is special.
            let removed = all[n as usize / 2].id;
            let rest: Vec<MaglevBackend> = all.iter().copied().filter(|b| b.id != removed).collect();
            let ideal = 1.0 / f64::from(n);
            let maglev = changed(&build_table(&all, size).unwrap(), &build_table(&rest, size).unwrap());
            let modulo = changed(&modulo_table(&all, size), &modulo_table(&rest, size));
            println!(
                "{n:>5} {:>8.2}% {:>8.2}% {:>12.3}x {:>8.2}% {:>12.2}x",
                ideal * 100.0,
                maglev * 100.0,
                maglev / ideal,
                modulo * 100.0,
                modulo / ideal
            );
        }
    }

    let size = 65537;
    println!();
    println!("Flows remapped when a backend is added to N ({size} entries; ideal = 1/(N+1))");
    println!("{:>5} {:>9} {:>9} {:>13}", "N", "ideal", "maglev", "maglev/ideal");
    for n in [2u32, 5, 10, 50, 100] {
        let ideal = 1.0 / f64::from(n + 1);
        let maglev = changed(&build_table(&backends(n), size).unwrap(), &build_table(&backends(n + 1), size).unwrap());
        println!("{n:>5} {:>8.2}% {:>8.2}% {:>12.3}x", ideal * 100.0, maglev * 100.0, maglev / ideal);
    }

    reconciler_pass();
}

/// What a reconciler pass pays to plan the load balancer when nothing changed, and after one
/// backend of one service went down: with the table cache it keeps between passes, against
/// building every table anew (what `plan` does, and what every pass did before the cache).
fn reconciler_pass() {
    let n: u32 = std::env::var("FERRULE_BENCH_PLAN_SERVICES").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let services: Vec<Service> = (0..n)
        .map(|i| Service {
            name: format!("s{i}"),
            vip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x200, 0, 0, 0, (i >> 16) as u16, i as u16)),
            port: 80,
            protocol: Protocol::Tcp,
            mode: Mode::Dsr,
            backends: (0..3)
                .map(|b| Backend {
                    address: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x300, 0, 0, 0, i as u16, b)),
                    port: 8080,
                    weight: 1,
                })
                .collect(),
            health: None,
            announce: AnnounceWhen::Healthy,
            maglev_table_size: 65537,
        })
        .collect();
    let healthy = HealthView::default();
    let mut state = LbState::default();
    for op in plan(&services, &healthy, &state) {
        state.apply(&op).unwrap();
    }
    let mut one_down = HealthView::default();
    let b = &services[0].backends[0];
    one_down.set(
        ServiceKey::of(&services[0]),
        SocketAddr::new(b.address, b.port),
        BackendHealth::Unhealthy { reason: "bench".into() },
    );
    let mut cache = TableCache::default();
    assert!(plan_with(&services, &healthy, &state, &mut cache).is_empty());
    println!();
    println!("Reconciler pass, {n} services of 65537 slots and 3 backends (median; baseline = every table built anew)");
    println!("{:<28} {:>12} {:>12} {:>8}", "", "cached", "anew", "ratio");
    // "one backend down" flips that backend at every pass, so each cached pass builds one table.
    for (what, flips) in [("nothing changed", false), ("one backend flips", true)] {
        let mut down = false;
        let cached = median_time(5, || {
            down = flips && !down;
            let health = if down { &one_down } else { &healthy };
            black_box(plan_with(&services, health, &state, &mut cache));
        });
        let health = if flips { &one_down } else { &healthy };
        let anew = median_time(3, || {
            black_box(plan(&services, health, &state));
        });
        println!(
            "{what:<28} {:>9.2} ms {:>9.2} ms {:>7.0}x",
            cached.as_secs_f64() * 1e3,
            anew.as_secs_f64() * 1e3,
            anew.as_secs_f64() / cached.as_secs_f64()
        );
    }
    // What isolating a refused service costs when nothing is refused: every op checked against
    // a model of the maps before it is written, against what a pass did before (the same model
    // updated after the write).
    let first = plan(&services, &healthy, &LbState::default());
    let isolating = median_time(5, || {
        let written =
            write_isolating(&LbState::default(), &first, |_: &[LbOp]| -> Result<(), WriteStop<()>> { Ok(()) });
        assert!(written.is_complete());
        black_box(written);
    });
    let after = median_time(5, || {
        let mut model = LbState::default();
        for op in &first {
            model.apply(op).unwrap();
        }
        black_box(model);
    });
    println!(
        "first install, model of the maps ({} ops): write_isolating {:.2} ms, applying the ops after the write (before \
         isolation) {:.2} ms: {:.2}x",
        first.len(),
        isolating.as_secs_f64() * 1e3,
        after.as_secs_f64() * 1e3,
        isolating.as_secs_f64() / after.as_secs_f64()
    );
}
