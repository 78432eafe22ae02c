//! Whole nodes (driver + tunnel + replica + emulated firewall) in one process over loopback
//! UDP: convergence, dialect translation, the control socket and /metrics.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pfsync_gw::config::{Config, EmulatorConfig, Key, PeerConfig};
use pfsync_gw::node::status::Status;
use pfsync_gw::node::{control, Node, NodeHandle};
use pfsync_gw::wire::Dialect;

struct Site {
    handle: NodeHandle,
}

fn base_config(i: usize, key: &Key, dialect: Dialect, rate: u32) -> Config {
    Config::loopback_emulator(
        format!("gw-{i}"),
        key.clone(),
        format!("em{i}"),
        dialect,
        EmulatorConfig {
            hostid: Some(0x0a00_0001 + i as u32),
            rate,
            max_states: 5_000,
            maxupd: 128,
            seed: Some(7 + i as u64),
            churn_for: None,
        },
    )
}

/// Start `dialects.len()` nodes in a full mesh; `tweak` may adjust each config.
async fn mesh(dialects: &[Dialect], rate: u32, tweak: impl Fn(usize, &mut Config)) -> Vec<Site> {
    let keys: Vec<Key> = dialects.iter().map(|_| Key::generate()).collect();
    let mut sites = Vec::new();
    let mut cfgs = Vec::new();
    for (i, d) in dialects.iter().enumerate() {
        let mut cfg = base_config(i, &keys[i], *d, rate);
        tweak(i, &mut cfg);
        let (node, handle) = Node::bind(cfg.clone()).await.expect("bind");
        tokio::spawn(node.run());
        sites.push(Site { handle });
        cfgs.push(cfg);
    }
    for i in 0..dialects.len() {
        let mut cfg = cfgs[i].clone();
        cfg.peers = (0..dialects.len())
            .filter(|&j| j != i)
            .map(|j| PeerConfig {
                name: format!("gw-{j}"),
                public_key: keys[j].public(),
                public_key_next: None,
                endpoint: Some(sites[j].handle.local_addr),
                psk: None,
                persistent_keepalive: Some(Duration::from_secs(1)),
                creators: Vec::new(),
            })
            .collect();
        sites[i].handle.reload_with(cfg);
    }
    sites
}

/// After churn stops: every firewall table and every mirror must reach one digest.
async fn converge(sites: &[Site], churn: Duration, limit: Duration) -> (Vec<Status>, Duration) {
    tokio::time::sleep(churn).await;
    for s in sites {
        s.handle.set_churn(false);
    }
    let stop = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snaps: Vec<Status> = sites.iter().map(|s| s.handle.snapshot()).collect();
        let mut digests: Vec<&str> = snaps.iter().map(|s| s.digest.as_str()).collect();
        digests.extend(
            snaps
                .iter()
                .map(|s| s.firewall.as_ref().unwrap().digest.as_str()),
        );
        if snaps[0].states > 0 && digests.windows(2).all(|w| w[0] == w[1]) {
            return (snaps, stop.elapsed());
        }
        if stop.elapsed() > limit {
            panic!("no convergence within {limit:?}: {snaps:#?}");
        }
    }
}

fn assert_no_rejections(snaps: &[Status]) {
    for s in snaps {
        let fw = s.firewall.as_ref().unwrap();
        for k in [
            "hdrops", "badval", "badlen", "badact", "badver", "badttl", "badif",
        ] {
            let v = fw.counters.get(k).copied();
            assert_eq!(
                v,
                Some(0),
                "{}: firewall rejected injected pfsync ({k})",
                s.node
            );
        }
        assert!(
            fw.counters["received_packets"] > 0,
            "{}: nothing injected",
            s.node
        );
        assert_eq!(
            s.drops.get("inject_rejected").copied().unwrap_or(0),
            0,
            "{}",
            s.node
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_openbsd_sites_converge() {
    let sites = mesh(&[Dialect::OpenbsdV6; 2], 300, |_, _| {}).await;
    let (snaps, took) = converge(&sites, Duration::from_secs(4), Duration::from_secs(10)).await;
    assert!(
        snaps[0].states > 500,
        "churn made too few states: {}",
        snaps[0].states
    );
    assert_no_rejections(&snaps);
    eprintln!(
        "converged {:?} after churn stopped, {} states",
        took, snaps[0].states
    );
    for s in &sites {
        s.handle.shutdown();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn freebsd_1400_and_openbsd_sync_through_translation() {
    let sites = mesh(&[Dialect::Freebsd1400, Dialect::OpenbsdV6], 300, |_, _| {}).await;
    let (snaps, _) = converge(&sites, Duration::from_secs(4), Duration::from_secs(10)).await;
    // Both firewalls apply what they receive with their own kernel receive checks; a packet
    // the translation got wrong would be dropped there and the digests would differ.
    assert_no_rejections(&snaps);
    assert_eq!(snaps[0].dialect, "freebsd-1400");
    assert_eq!(snaps[1].dialect, "openbsd-v6");
    for s in &sites {
        s.handle.shutdown();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn three_site_mesh_of_three_dialects_converges() {
    let sites = mesh(
        &[Dialect::NetbsdV3, Dialect::OpenbsdV6, Dialect::Freebsd1301],
        200,
        |_, _| {},
    )
    .await;
    let (snaps, _) = converge(&sites, Duration::from_secs(4), Duration::from_secs(12)).await;
    assert_no_rejections(&snaps);
    for s in &snaps {
        assert_eq!(s.peers.len(), 2);
        assert!(s.peers.iter().all(|p| p.established), "{}", s.node);
    }
    for s in &sites {
        s.handle.shutdown();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn status_socket_and_metrics_expose_counters() {
    let dir = std::env::temp_dir().join(format!("pfsync-gw-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("gw0.sock");
    let metrics_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sock2 = sock.clone();
    let sites = mesh(&[Dialect::OpenbsdV6; 2], 200, move |i, c| {
        if i == 0 {
            c.control_socket = Some(sock2.clone());
            c.metrics_listen = Some(format!("127.0.0.1:{metrics_port}").parse().unwrap());
        }
    })
    .await;
    let (snaps, _) = converge(&sites, Duration::from_secs(2), Duration::from_secs(10)).await;

    // The control socket answers with the same JSON the `status --json` command prints.
    let sock_q = sock.clone();
    let st: Status = tokio::task::spawn_blocking(move || control::query(&sock_q))
        .await
        .unwrap()
        .expect("status over the control socket");
    assert_eq!(st.node, "gw-0");
    assert_eq!(st.digest, snaps[0].digest);
    assert_eq!(st.peers.len(), 1);
    let p = &st.peers[0];
    assert!(p.established && p.rx_packets > 0 && p.tx_bytes > 0, "{p:?}");
    assert!(p.last_handshake_secs.is_some());
    assert!(
        st.local.get("captured").copied().unwrap_or(0) > 0,
        "{:?}",
        st.local
    );
    assert!(st.drops.contains_key("tunnel_bad_mac1"));

    // And the CLI prints it.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_pfsync-gw"))
            .args(["status", "--json", "--socket", sock.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cli: Status = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli.node, "gw-0");

    // Forged datagram → bad_mac1 counted, visible in /metrics.
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut forged = vec![0u8; 148];
    forged[0] = 1;
    u.send_to(&forged, sites[0].handle.local_addr).unwrap();
    // /metrics serves the status snapshot (refreshed every 200 ms): ask until it counts the
    // drop, or for 5 s.
    let bad_mac1 = "pfsync_gw_drops_total{node=\"gw-0\",reason=\"tunnel_bad_mac1\"} 1";
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let body = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let body = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut b = String::new();
            s.read_to_string(&mut b).unwrap();
            b
        })
        .await
        .unwrap();
        if body.contains(bad_mac1) || std::time::Instant::now() > deadline {
            break body;
        }
    };
    assert!(body.starts_with("HTTP/1.0 200"), "{body}");
    assert!(
        body.contains("pfsync_gw_peer_up{node=\"gw-0\",peer=\"gw-1\"} 1"),
        "{body}"
    );
    assert!(body.contains(bad_mac1), "{body}");
    assert!(body.contains("pfsync_gw_states{node=\"gw-0\"} "), "{body}");
    // Counters exist from the start, at 0 (issue #10.4), in the JSON and on /metrics.
    for k in [
        "sync_malformed",
        "sync_epoch_mismatch",
        "local_bad_ttl",
        "tunnel_send_failed",
    ] {
        assert!(st.drops.contains_key(k), "{k} missing: {:?}", st.drops);
        assert!(
            body.contains(&format!(
                "pfsync_gw_drops_total{{node=\"gw-0\",reason=\"{k}\"}} 0"
            )),
            "{k} not on /metrics at 0: {body}"
        );
    }
    for k in [
        "sweep_deleted",
        "sweeps_after_shedding",
        "sweep_after_shedding_owed_now",
        "sweeps_lossy",
        "epochs_opened",
        "sessions_kept",
        "relayed_verbatim",
        "injected_joined",
        "shed_capture_filtered",
        "shed_share_percent_now",
        "shed_inject_late",
        "rx_coalesce_pauses",
        "rx_coalesce_trials",
        "rx_coalesce_on_now",
        "rx_coalesce_saving_percent_now",
        "sync_answer_bytes",
        "sync_pad_tx_bytes",
        "sync_pay_requests",
    ] {
        assert!(st.local.contains_key(k), "{k} missing: {:?}", st.local);
    }
    // Bytes the answer budget charged are accounting, not dropped packets.
    for k in [
        "sync_answer_bytes",
        "sync_pad_rx_bytes",
        "sync_pay_requests",
    ] {
        assert!(!st.drops.contains_key(k), "{k} among the drops");
        assert!(
            !body.contains(&format!("reason=\"{k}\"")),
            "{k} on /metrics as a drop"
        );
    }
    // Gauges go down: exported as a gauge family, not among the counters.
    for k in ["shed_share_percent_now", "tunnel_under_load_now"] {
        assert!(
            body.contains(&format!("pfsync_gw_local{{node=\"gw-0\",what=\"{k}\"}} 0")),
            "{k} not a gauge on /metrics: {body}"
        );
        assert!(!body.contains(&format!(
            "pfsync_gw_local_total{{node=\"gw-0\",what=\"{k}\"}}"
        )));
    }
    for s in &sites {
        s.handle.shutdown();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
