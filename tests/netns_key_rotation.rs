//! Key rotation without downtime (issue 9, item 7): both gateways change their static
//! keys by SIGHUP while both firewalls churn; every state still arrives, the tunnels
//! never go down, and afterwards the peers authenticate each other with the new keys.
//!
//! Procedure (docs/DEPLOYMENT.md, "Key rotation"): 1. each side adds the other's new
//! public key as `public_key_next`, SIGHUP; 2. each side switches `private_key_file`,
//! SIGHUP; 3. each side moves the new key to `public_key` and drops the old, SIGHUP.

#[path = "common/lab.rs"]
mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::capture::{RawPf, PFSYNC_GROUP};
use common::gw::{keygen, Keys, Net, SYNC_IF};
use common::netns::skip_unless_root;
use common::pf::{packet, state_ids, tcp_state};
use common::poll::wait_for;
use pfsync_gw::wire::Message;

/// Config of gateway `i` with private key `own` and, per other site, (public, next).
fn write_config(net: &Net, i: usize, own: &Keys, peer: (&str, Option<&str>)) -> PathBuf {
    let s = net.site(i);
    let p = net.site(1 - i);
    let mut t = format!(
        "[node]\nname = \"{}\"\nprivate_key_file = \"{}\"\nlisten = \"{}\"\ncontrol_socket = \"{}\"\n\n\
         [local]\nmode = \"raw\"\ninterface = \"{SYNC_IF}\"\ndialect = \"openbsd-v6\"\nfirewalls = [\"{}\"]\n\n\
         [[peer]]\nname = \"{}\"\npublic_key = \"{}\"\nendpoint = \"{}\"\n",
        s.gw(),
        own.private_file.display(),
        s.tunnel_addr(),
        net.control_socket(i).display(),
        s.fw_addr,
        p.gw(),
        peer.0,
        p.tunnel_addr()
    );
    if let Some(next) = peer.1 {
        t.push_str(&format!("public_key_next = \"{next}\"\n"));
    }
    let path = net.lab.path(&format!("{}.toml", s.gw()));
    std::fs::write(&path, t).unwrap();
    path
}

/// SIGHUP the gateway running in `ns`.
fn hup(ns: &str) {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    let mut n = 0;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "pfsync-gw" {
            // SAFETY: signalling a pid just listed in the lab's own namespace.
            unsafe { libc::kill(pid.parse().unwrap(), libc::SIGHUP) };
            n += 1;
        }
    }
    assert_eq!(n, 1, "one gateway in {ns}");
}

#[test]
fn both_sides_rotate_keys_during_churn_without_loss() {
    if skip_unless_root("both_sides_rotate_keys_during_churn_without_loss") {
        return;
    }
    let net = Net::new("rot", 2, false);
    let (a, b) = (net.site(0).clone(), net.site(1).clone());
    write_config(&net, 0, &a.keys, (&b.keys.public, None));
    write_config(&net, 1, &b.keys, (&a.keys.public, None));
    net.start_gw(1);
    net.start_gw(0);
    net.wait_established(&[0, 1], Duration::from_secs(15));
    let new_a = keygen(&net.lab, "a-new");
    let new_b = keygen(&net.lab, "b-new");

    let fws = [
        RawPf::open(&a.fw_ns, SYNC_IF, true),
        RawPf::open(&b.fw_ns, SYNC_IF, true),
    ];
    let creators = [0x0a0a_0a0au32, 0x0b0b_0b0b];
    let stop = AtomicBool::new(false);
    let (sent, got, downs) =
        std::thread::scope(|s| {
            // Churn both ways: 200 new states/s from each firewall.
            let churn: Vec<_> = (0..2)
                .map(|i| {
                    let (fw, stop) = (&fws[i], &stop);
                    s.spawn(move || {
                        let mut k = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            fw.send(
                                &packet(&[Message::Ins(tcp_state(k, creators[i]))]),
                                PFSYNC_GROUP,
                            );
                            k += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        k
                    })
                })
                .collect();
            let recv: Vec<_> = (0..2)
                .map(|i| {
                    let (fw, stop) = (&fws[1 - i], &stop);
                    s.spawn(move || {
                        let mut got = HashSet::new();
                        let mut quiet_since = None;
                        loop {
                            if let Some(p) = fw.recv(Duration::from_millis(100)) {
                                got.extend(state_ids(&p.payload, creators[i]));
                                quiet_since = None;
                            } else if stop.load(Ordering::Relaxed) {
                                // Done once the relay has been quiet for 3 s after the churn.
                                let t = *quiet_since.get_or_insert_with(Instant::now);
                                if t.elapsed() > Duration::from_secs(3) {
                                    return got;
                                }
                            }
                        }
                    })
                })
                .collect();
            // Watch the tunnels: any peer down during the rotation is a failure.
            let watch = s.spawn(|| {
                let mut downs = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..2 {
                        if let Ok(st) = common::gw::status(&net.control_socket(i)) {
                            if st.peers.iter().any(|p| !p.established) {
                                downs.push(format!("{} at {:.1}s", st.node, net.lab.t()));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                downs
            });

            std::thread::sleep(Duration::from_secs(2));
            net.lab.log("rotation step 1: accept the next keys");
            write_config(&net, 0, &a.keys, (&b.keys.public, Some(&new_b.public)));
            write_config(&net, 1, &b.keys, (&a.keys.public, Some(&new_a.public)));
            hup(&a.gw_ns);
            hup(&b.gw_ns);
            std::thread::sleep(Duration::from_secs(2));
            net.lab.log("rotation step 2: switch private keys");
            write_config(&net, 0, &new_a, (&b.keys.public, Some(&new_b.public)));
            write_config(&net, 1, &new_b, (&a.keys.public, Some(&new_a.public)));
            hup(&a.gw_ns);
            std::thread::sleep(Duration::from_millis(500));
            hup(&b.gw_ns);
            // Both sides now handshake with the new keys.
            wait_for(
                "handshakes with the new keys",
                Duration::from_secs(20),
                |last| {
                    let sa = net.status(0);
                    let sb = net.status(1);
                    *last = format!("a: {} / b: {}", sa.public_key, sb.public_key);
                    (sa.public_key == new_a.public
                        && sb.public_key == new_b.public
                        && sa.peers.iter().chain(&sb.peers).all(|p| {
                            p.established && p.last_handshake_secs.is_some_and(|t| t < 3.0)
                        }))
                    .then_some(())
                },
            );
            std::thread::sleep(Duration::from_secs(2));
            net.lab.log("rotation step 3: drop the old keys");
            write_config(&net, 0, &new_a, (&new_b.public, None));
            write_config(&net, 1, &new_b, (&new_a.public, None));
            hup(&a.gw_ns);
            hup(&b.gw_ns);
            std::thread::sleep(Duration::from_secs(3));
            stop.store(true, Ordering::Relaxed);
            let sent: Vec<u64> = churn.into_iter().map(|h| h.join().unwrap()).collect();
            let got: Vec<HashSet<u64>> = recv.into_iter().map(|h| h.join().unwrap()).collect();
            (sent, got, watch.join().unwrap())
        });
    for i in 0..2 {
        let missing: Vec<u64> = (0..sent[i]).filter(|k| !got[i].contains(k)).collect();
        net.lab.log(&format!(
            "fw-{} -> fw-{}: {} states sent, {} missing",
            net.site(i).name,
            net.site(1 - i).name,
            sent[i],
            missing.len()
        ));
        assert!(
            missing.is_empty(),
            "states lost: {:?}…",
            &missing[..missing.len().min(10)]
        );
    }
    assert!(downs.is_empty(), "tunnel down during rotation: {downs:?}");
    // The old keys are gone: the peers now show and use only the new ones.
    let sa = net.status(0);
    let sb = net.status(1);
    assert_eq!(sa.peers[0].public_key, new_b.public);
    assert_eq!(sb.peers[0].public_key, new_a.public);
    assert!(sa.peers[0].established && sb.peers[0].established);
}
