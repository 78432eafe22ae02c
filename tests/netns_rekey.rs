//! Issue #10.1: tunnel rekeys cost the sync stream nothing. Two emulated firewalls churn
//! ≈1,000 states/s each through two gateways whose tunnel rekeys every 2 s (the
//! `[node] rekey_after_secs` test aid). Over ≥ 20 rekeys: no new sync epoch, no resync,
//! no `sync_epoch_mismatch`, and every peer packet injected as it arrived (same dialect).
//! Then a gateway restarts: that does open a new epoch, and everything converges.

#[path = "common/lab.rs"]
mod common;

use std::time::Duration;

use common::emu::{start_emu, wait_churn_stopped, EmuOpts};
use common::gw::{drop_count, local_count, Net};
use common::netns::skip_unless_root;
use common::poll::wait_for;
use common::sync::wait_converged;
use pfsync_gw::node::status::Status;

const REKEY_SECS: u64 = 2;
const REKEYS: u64 = 20;

/// Write gateway `i`'s standard config with the rekey test aid in `[node]`.
fn write_config(net: &Net, i: usize) {
    let path = net.write_gw_config(i, "");
    let t = std::fs::read_to_string(&path).unwrap();
    let t = t.replacen(
        "[node]\n",
        &format!("[node]\nrekey_after_secs = {REKEY_SECS}\n"),
        1,
    );
    std::fs::write(&path, t).unwrap();
}

fn line(st: &Status) -> String {
    let p = &st.peers[0];
    format!(
        "{}: sessions {} (kept {}), epochs opened {} / peer epochs {}, resyncs {}, \
         epoch_mismatch {}, relayed verbatim {} / corrected {} / re-encoded {}, retransmits {}, \
         hello requests {}, peer restarts {}",
        st.node,
        local_count(st, "sessions_established"),
        local_count(st, "sessions_kept"),
        local_count(st, "epochs_opened"),
        local_count(st, "peer_epochs"),
        p.resyncs,
        drop_count(st, "sync_epoch_mismatch"),
        local_count(st, "relayed_verbatim"),
        local_count(st, "relayed_corrected"),
        local_count(st, "relayed_reencoded"),
        p.retransmits,
        local_count(st, "hello_requests"),
        local_count(st, "peer_restarts"),
    )
}

#[test]
fn rekeys_keep_the_sync_stream() {
    if skip_unless_root("rekeys_keep_the_sync_stream") {
        return;
    }
    let net = Net::new("rk", 2, false);
    write_config(&net, 0);
    write_config(&net, 1);
    net.start_gw(0);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    // Let the start-up resync finish before the churn: from here on nothing may restart.
    wait_for("start-up resync done", Duration::from_secs(15), |last| {
        let st = [net.status(0), net.status(1)];
        *last = format!("{}\n{}", line(&st[0]), line(&st[1]));
        st.iter()
            .all(|s| !s.peers[0].resync_in_progress)
            .then_some(())
    });
    let base = [net.status(0), net.status(1)];
    let churn_secs = (REKEY_SECS * REKEYS) as u32 + 40;
    for (i, hostid) in [(0, 0xa1u32), (1, 0xb1)] {
        let mut o = EmuOpts::new(hostid);
        o.rate = 1000;
        o.churn_for = churn_secs;
        o.bulk = false;
        start_emu(&net, i, &o);
    }
    let (_, took) = wait_for(
        &format!("{REKEYS} rekeys on both gateways"),
        Duration::from_secs(REKEY_SECS * REKEYS * 3),
        |last| {
            let st = [net.status(0), net.status(1)];
            *last = format!("{}\n{}", line(&st[0]), line(&st[1]));
            for n in [&net.site(0).emu(), &net.site(1).emu()] {
                if let Err(e) = net.lab.check_running(n) {
                    panic!("{e}");
                }
            }
            st.iter()
                .zip(&base)
                .all(|(s, b)| {
                    local_count(s, "sessions_kept") >= local_count(b, "sessions_kept") + REKEYS
                })
                .then_some(())
        },
    );
    let st = [net.status(0), net.status(1)];
    for (s, b) in st.iter().zip(&base) {
        net.lab
            .log(&format!("after {:.0}s: {}", took.as_secs_f64(), line(s)));
        let p = &s.peers[0];
        assert!(p.established, "{}: peer down after rekeys", s.node);
        assert_eq!(
            local_count(s, "epochs_opened"),
            1,
            "{}: new send epoch",
            s.node
        );
        assert_eq!(
            local_count(s, "peer_epochs"),
            1,
            "{}: peer opened a new epoch",
            s.node
        );
        assert_eq!(
            p.resyncs, b.peers[0].resyncs,
            "{}: resync during rekeys",
            s.node
        );
        assert_eq!(drop_count(s, "sync_epoch_mismatch"), 0, "{}", s.node);
        assert_eq!(local_count(s, "hello_requests"), 0, "{}", s.node);
        let verbatim = local_count(s, "relayed_verbatim");
        assert!(
            verbatim > 10_000,
            "{}: only {verbatim} packets relayed",
            s.node
        );
        // A peer packet is injected as it came unless it is stale against the mirror (both
        // firewalls changed one state at once; the newer copy goes instead: conflict
        // resolution, with or without rekeys) — never because of a lost stream, a resync
        // or an unknown state.
        assert_eq!(
            local_count(s, "relayed_reencoded"),
            0,
            "{}: peer packets re-encoded instead of injected as they came",
            s.node
        );
        assert!(
            local_count(s, "relayed_corrected") * 50 < verbatim,
            "{}: > 2 % of peer packets stale",
            s.node
        );
        assert_eq!(p.retransmits, b.peers[0].retransmits, "{}: repairs", s.node);
    }

    // A real restart of gw-b: gw-a sees the new incarnation and opens a new epoch.
    net.kill_gw(1, libc::SIGTERM);
    net.start_gw(1);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    let a = net.status(0);
    net.lab.log(&format!("after gw-b restart: {}", line(&a)));
    assert_eq!(
        local_count(&a, "peer_restarts"),
        1,
        "gw-a did not see gw-b restart"
    );
    assert_eq!(
        local_count(&a, "epochs_opened"),
        2,
        "gw-a: no new epoch for the restarted peer"
    );
    let e = [net.site(0).emu(), net.site(1).emu()];
    wait_churn_stopped(&net, &e, Duration::from_secs(u64::from(churn_secs) + 30));
    let (t, states) = wait_converged(&net, &[&e[0], &e[1]], &[0, 1], Duration::from_secs(30));
    net.lab.log(&format!(
        "converged {:.2}s after churn end, {states} states",
        t.as_secs_f64()
    ));
    assert!(states > 0);
}
