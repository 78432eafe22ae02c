//! Issue #10.2: deletions a firewall makes while its gateway is down reach the other
//! firewalls. gw-a stops for 30 s while fw-a keeps churning (deleting ≥ 1,000 of its states,
//! creating others); within 10 s of gw-a's restart fw-b holds exactly fw-a's live states.
//! Then one dump that loses a packet (nftables) deletes nothing that exists.

#[path = "common/lab.rs"]
mod common;

use std::time::{Duration, Instant};

use common::emu::{emu_status, start_emu, EmuOpts};
use common::gw::{local_count, Net, SYNC_IF};
use common::netns::skip_unless_root;
use common::poll::wait_for;
use common::sync::wait_converged;

const DOWN: Duration = Duration::from_secs(30);

fn emu_counter(net: &Net, name: &str, k: &str) -> u64 {
    emu_status(net, name).map_or(0, |s| s.counter(k))
}

#[test]
fn deletions_while_a_gateway_is_down_reach_the_peers() {
    if skip_unless_root("deletions_while_a_gateway_is_down_reach_the_peers") {
        return;
    }
    let net = Net::new("del", 2, false);
    net.start_gw(0);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    let (fa, fb) = (net.site(0).emu(), net.site(1).emu());
    let warmup = Duration::from_secs(8);
    let mut o = EmuOpts::new(0xa1);
    o.rate = 300;
    o.initial_states = 3000;
    // Churn through the outage, stop a second before gw-a comes back.
    o.churn_for = (warmup + DOWN).as_secs() as u32 - 1;
    start_emu(&net, 0, &o);
    start_emu(&net, 1, &EmuOpts::new(0xb1));
    let started = Instant::now();
    std::thread::sleep(warmup);
    let deleted_before = emu_counter(&net, &fa, "deleted") + emu_counter(&net, &fa, "expired");

    net.kill_gw(0, libc::SIGTERM);
    let down_at = Instant::now();
    let b_before = emu_status(&net, &fb).expect("fw-b status").states;
    std::thread::sleep(DOWN.saturating_sub(down_at.elapsed()));
    let deleted =
        emu_counter(&net, &fa, "deleted") + emu_counter(&net, &fa, "expired") - deleted_before;
    net.lab.log(&format!(
        "gw-a down {:.0}s: fw-a deleted {deleted} states meanwhile; fw-b held {b_before}",
        down_at.elapsed().as_secs_f64()
    ));
    assert!(
        deleted >= 1000,
        "fw-a deleted only {deleted} states while gw-a was down"
    );
    assert!(
        started.elapsed() >= warmup + DOWN - Duration::from_secs(1),
        "churn still running"
    );

    net.start_gw(0);
    let (took, states) = wait_converged(&net, &[&fa, &fb], &[0, 1], Duration::from_secs(10));
    let a = net.status(0);
    net.lab.log(&format!(
        "converged {:.2}s after gw-a's restart: {states} states; gw-a sweeps {}, \
         unlisted {}, deleted {}",
        took.as_secs_f64(),
        local_count(&a, "sweeps"),
        local_count(&a, "sweep_unlisted"),
        local_count(&a, "sweep_deleted"),
    ));
    assert!(
        local_count(&a, "sweep_deleted") > 0,
        "converged without the sweep deleting anything: was anything missed?"
    );

    // One dump that loses a packet: the 3rd full-size pfsync packet from fw-a from now on.
    // At the netdev ingress hook, which the link capture reads after (`input` is after it).
    let before = net.status(0);
    let ns = &net.site(0).gw_ns;
    net.lab.nft(
        ns,
        &format!(
            "table netdev pgwdump {{\n chain in {{\n  type filter hook ingress device \"{SYNC_IF}\" priority 0; policy accept;\n  \
             ip protocol 240 ip length > 1200 numgen inc mod 1000000 == 2 counter drop\n }}\n}}\n"
        ),
    );
    wait_for("two more sweeps of gw-a", Duration::from_secs(40), |last| {
        let s = net.status(0);
        *last = format!("sweeps {}", local_count(&s, "sweeps"));
        (local_count(&s, "sweeps") >= local_count(&before, "sweeps") + 2).then_some(())
    });
    net.lab.nft_delete_table(ns, "netdev", "pgwdump");
    let after = net.status(0);
    net.lab.log(&format!(
        "lossy dump: unlisted {} → {}, deleted {} → {}",
        local_count(&before, "sweep_unlisted"),
        local_count(&after, "sweep_unlisted"),
        local_count(&before, "sweep_deleted"),
        local_count(&after, "sweep_deleted"),
    ));
    assert!(
        local_count(&after, "sweep_unlisted") > local_count(&before, "sweep_unlisted"),
        "the dropped packet did not make a dump miss states: is the rule in place?"
    );
    assert_eq!(
        local_count(&after, "sweep_deleted"),
        local_count(&before, "sweep_deleted"),
        "a lossy dump deleted live states"
    );
    // And every table still agrees.
    wait_converged(&net, &[&fa, &fb], &[0, 1], Duration::from_secs(10));
}
