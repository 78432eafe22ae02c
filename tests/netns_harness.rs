//! Self-tests of the namespace harness (no daemon involved), so a broken lab is never
//! mistaken for a broken gateway: raw proto-240 send/capture, TTL visibility, nftables
//! loss/partition/heal on the transit bridge, and teardown on panic.
//!
//! The modules are included one by one (not `mod common`) so this file does not depend
//! on the daemon crate's API.

#[path = "common/capture.rs"]
#[allow(dead_code)]
mod capture;
#[path = "common/netns.rs"]
#[allow(dead_code)]
mod netns;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use capture::{udp_recv, udp_socket, Dir, LinkCapture, RawPf, PFSYNC_GROUP};
use netns::{skip_unless_root, Impair, Lab};

/// Two hosts on a bridge in a third namespace: `h1` 10.9.0.1, `h2` 10.9.0.2 on `eth0`.
fn two_hosts(tag: &str) -> (Lab, String, String, String) {
    let lab = Lab::new(tag);
    let br = lab.add_ns("br");
    lab.bridge(&br, "br0");
    let mut hosts = Vec::new();
    for i in 1..=2 {
        let h = lab.add_ns(&format!("h{i}"));
        let port = format!("p{i}");
        lab.veth(&h, "eth0", &br, &port);
        lab.attach(&br, &port, "br0");
        lab.addr(&h, "eth0", &format!("10.9.0.{i}/24"));
        hosts.push(h);
    }
    let h2 = hosts.pop().unwrap();
    let h1 = hosts.pop().unwrap();
    (lab, br, h1, h2)
}

#[test]
fn raw_pfsync_multicast_and_unicast_keep_ttl_and_bytes() {
    if skip_unless_root("raw_pfsync_multicast_and_unicast_keep_ttl_and_bytes") {
        return;
    }
    let (lab, _br, h1, h2) = two_hosts("hraw");
    let tx = RawPf::open(&h1, "eth0", false);
    let rx = RawPf::open(&h2, "eth0", true);
    let cap = LinkCapture::open(&h2, "eth0");

    let payload: Vec<u8> = (0..200u32).map(|i| (i * 7) as u8).collect();
    tx.send(&payload, PFSYNC_GROUP);
    let p = rx
        .recv(Duration::from_secs(3))
        .expect("multicast pfsync not received");
    assert_eq!(
        (p.ttl, p.proto, p.dst, p.payload.as_slice()),
        (255, 240, PFSYNC_GROUP, payload.as_slice())
    );
    assert_eq!(p.src, Ipv4Addr::new(10, 9, 0, 1));
    // h2's own IGMP reports for the group it joined (repeated within a second of the
    // join) may come first: the first pfsync frame is the one.
    let (d, c) = std::iter::from_fn(|| cap.recv(Duration::from_secs(3)))
        .find(|(_, c)| c.proto == 240)
        .expect("AF_PACKET saw no pfsync");
    assert_eq!((d, c.proto, c.payload), (Dir::In, 240, payload.clone()));

    // A TTL the firewall would reject is visible as such (the TTL check can fail).
    tx.send_ttl(&payload[..50], Ipv4Addr::new(10, 9, 0, 2), 64);
    let p = rx
        .recv(Duration::from_secs(3))
        .expect("unicast pfsync not received");
    assert_eq!(
        (p.ttl, p.dst, p.payload.len()),
        (64, Ipv4Addr::new(10, 9, 0, 2), 50)
    );

    // Nothing else arrives (the sender does not hear its own multicast either).
    assert!(rx.recv(Duration::from_millis(200)).is_none());
    assert!(tx.recv(Duration::from_millis(200)).is_none());
    drop(lab);
}

/// Send `n` datagrams h1 → h2:51900, count how many arrive.
fn udp_delivery(h1: &str, h2: &str, n: usize) -> usize {
    let a = udp_socket(h1, "10.9.0.1:0".parse().unwrap());
    let b = udp_socket(h2, "10.9.0.2:51900".parse().unwrap());
    let to: SocketAddr = "10.9.0.2:51900".parse().unwrap();
    // Resolve ARP first: the kernel queues only a few packets while a neighbour is pending.
    a.send_to(b"warm", to).unwrap();
    udp_recv(&b, Duration::from_secs(2));
    // Count concurrently (the receive buffer, forced to 4 MB, rides out a stalled reader).
    let counter = std::thread::spawn(move || {
        let mut got = 0;
        while udp_recv(&b, Duration::from_millis(300)).is_some() {
            got += 1;
        }
        got
    });
    for i in 0..n {
        a.send_to(&(i as u32).to_be_bytes(), to).unwrap();
        if i % 10 == 9 {
            // Paced so that backlogs and buffers are never the cause of loss.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    counter.join().unwrap()
}

#[test]
fn nft_loss_partition_and_heal_on_the_bridge() {
    if skip_unless_root("nft_loss_partition_and_heal_on_the_bridge") {
        return;
    }
    let (lab, br, h1, h2) = two_hosts("hnft");
    assert_eq!(
        udp_delivery(&h1, &h2, 500),
        500,
        "clean link loses datagrams"
    );

    lab.impair(&br, 51900, Impair::Loss(20));
    let got = udp_delivery(&h1, &h2, 2000);
    // 20% loss: 1600 expected, binomial sd ≈ 18.
    assert!(
        (1450..=1750).contains(&got),
        "20% loss delivered {got}/2000"
    );

    lab.impair(&br, 51900, Impair::Partition);
    assert_eq!(udp_delivery(&h1, &h2, 200), 0, "partition leaks");

    lab.impair(&br, 51900, Impair::None);
    assert_eq!(udp_delivery(&h1, &h2, 500), 500, "heal incomplete");
}

#[test]
fn lab_teardown_on_panic_removes_namespaces_and_processes() {
    if skip_unless_root("lab_teardown_on_panic_removes_namespaces_and_processes") {
        return;
    }
    let mut names = (String::new(), String::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("hdrop");
        let ns = lab.add_ns("x");
        lab.spawn("sleeper", &ns, "sleep", &["1000"], &[]);
        lab.check_running("sleeper").unwrap();
        names = (ns, lab.dir.display().to_string());
        panic!("deliberate");
    }));
    assert!(r.is_err());
    assert!(
        !Path::new(&format!("/var/run/netns/{}", names.0)).exists(),
        "namespace left behind"
    );
    // The sleeper was SIGKILLed and reaped: no process of ours runs `sleep 1000` in it.
    let ps = netns::run(std::process::Command::new("ps").args(["-eo", "ppid=,args="]));
    let me = std::process::id().to_string();
    assert!(
        !ps.lines()
            .any(|l| l.trim_start().starts_with(&me) && l.contains("sleep 1000")),
        "child left running:\n{ps}"
    );
}
