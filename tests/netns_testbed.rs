//! Why the gateway exists: on a plain pfsync link anyone on the link can insert states
//! into a firewall; behind gateways, the same injection on the transit link is ignored.

#[path = "common/lab.rs"]
mod common;

use std::time::Duration;

use common::capture::{RawPf, PFSYNC_GROUP};
use common::emu::{emu_status, start_emu, start_emu_in, EmuOpts};
use common::gw::{Net, TRANSIT_IF};
use common::netns::skip_unless_root;
use common::pf::{packet, tcp_state};
use common::poll::wait_for;
use common::sync::wait_converged;
use pfsync_gw::wire::Message;

const EVIL_CREATOR: u32 = 0x0bad_0bad;
const INITIAL: u32 = 50;

/// Inject 3 forged INS (TTL 255, to the pfsync group) from `raw`.
fn inject(raw: &RawPf) {
    for id in 0..3u64 {
        raw.send(
            &packet(&[Message::Ins(tcp_state(0x6660 + id, EVIL_CREATOR))]),
            PFSYNC_GROUP,
        );
    }
}

#[test]
fn plain_pfsync_accepts_an_attacker_but_the_gateway_does_not() {
    if skip_unless_root("plain_pfsync_accepts_an_attacker_but_the_gateway_does_not") {
        return;
    }
    // --- Without a gateway: fw-a, fw-b and the attacker share one sync link. ---
    let net = Net::new("bed", 0, false);
    let link = net.lab.add_ns("link");
    net.lab.bridge(&link, "br0");
    let mut hosts = Vec::new();
    for (i, name) in ["fwa", "fwb", "atk"].iter().enumerate() {
        let ns = net.lab.add_ns(name);
        let port = format!("p{name}");
        net.lab.veth(&ns, "sync0", &link, &port);
        net.lab.attach(&link, &port, "br0");
        net.lab.addr(&ns, "sync0", &format!("10.50.0.{}/24", i + 1));
        hosts.push(ns);
    }
    for (k, hostid) in [(0usize, 0xa1u32), (1, 0xb1)] {
        let mut o = EmuOpts::new(hostid);
        o.initial_states = INITIAL;
        start_emu_in(&net, &format!("plain-{k}"), &hosts[k], "sync0", &o);
    }
    let (took, n) = wait_converged(&net, &["plain-0", "plain-1"], &[], Duration::from_secs(20));
    net.lab.log(&format!(
        "plain link: {n} states in sync after {:.2}s",
        took.as_secs_f64()
    ));
    assert_eq!(n, 2 * u64::from(INITIAL));

    inject(&RawPf::open(&hosts[2], "sync0", false));
    wait_for(
        "the plain firewall to accept the attacker's states",
        Duration::from_secs(5),
        |last| {
            let states = emu_status(&net, "plain-1")?.states;
            *last = format!("{states} states");
            (states == n + 3).then_some(())
        },
    );
    net.lab
        .log("plain pfsync: attacker's 3 states accepted by fw-b (as expected: no authentication)");

    // --- With gateways: the attacker is on the transit link. ---
    let net = Net::new("bedgw", 2, true);
    net.start_gw(0);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    for (i, hostid) in [(0usize, 0xa1u32), (1, 0xb1)] {
        let mut o = EmuOpts::new(hostid);
        o.initial_states = INITIAL;
        start_emu(&net, i, &o);
    }
    let emus = [net.site(0).emu(), net.site(1).emu()];
    let (took, n) = wait_converged(
        &net,
        &[&emus[0], &emus[1]],
        &[0, 1],
        Duration::from_secs(20),
    );
    net.lab.log(&format!(
        "behind gateways: {n} states in sync after {:.2}s",
        took.as_secs_f64()
    ));
    assert_eq!(
        n,
        2 * u64::from(INITIAL),
        "legitimate states must cross the gateways"
    );

    inject(&RawPf::open(net.attacker(), TRANSIT_IF, false));
    // Give the injection every chance to land (it would in well under a second, as the
    // plain case shows), then check nothing changed anywhere.
    std::thread::sleep(Duration::from_secs(2));
    let (_, n2) = wait_converged(&net, &[&emus[0], &emus[1]], &[0, 1], Duration::from_secs(5));
    assert_eq!(n2, n, "the attacker's states got in behind the gateway");
}
