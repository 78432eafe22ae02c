//! The operator's view of a node: a serialisable snapshot shared by `status`, `/metrics`
//! and the demo's progress line.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub node: String,
    pub public_key: String,
    pub listen: String,
    pub dialect: String,
    pub uptime_secs: f64,
    /// States in the gateway's mirror table.
    pub states: usize,
    /// Order-independent digest of the mirror (equal on converged nodes).
    pub digest: String,
    /// Firewall side: packets captured, injected, bulk requests answered.
    pub local: BTreeMap<String, u64>,
    /// Drops by reason (tunnel, firewall side, sync protocol).
    pub drops: BTreeMap<String, u64>,
    pub peers: Vec<PeerView>,
    /// The in-process emulator's own table, when local.mode = "emulator".
    pub firewall: Option<FirewallView>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub name: String,
    pub public_key: String,
    pub endpoint: Option<String>,
    /// Tunnel session and sync epoch both up: packets are relayed as they are.
    pub established: bool,
    /// Seconds since the last completed handshake.
    pub last_handshake_secs: Option<f64>,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub retransmits: u64,
    pub resyncs: u64,
    pub resync_in_progress: bool,
    /// The queueing delay the peer reported in its last ACK, µs: how long what we relay
    /// waits in its socket (a peer behind; our shedding counts it).
    #[serde(default)]
    pub delay_us: u64,
    /// The sync stream's counters with this peer (`sync::PeerSyncStats::named`): NACKs,
    /// overflows of the resend queue, epochs, audits; `…_now` entries are gauges.
    #[serde(default)]
    pub sync: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FirewallView {
    pub states: usize,
    pub digest: String,
    pub counters: BTreeMap<String, u64>,
}

impl Status {
    /// `wg show`-like text.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "node: {}", self.node);
        let _ = writeln!(s, "  public key: {}", self.public_key);
        let _ = writeln!(s, "  listening: {}", self.listen);
        let _ = writeln!(s, "  dialect: {}", self.dialect);
        let _ = writeln!(s, "  uptime: {:.0}s", self.uptime_secs);
        let _ = writeln!(s, "  states mirrored: {}", self.states);
        let _ = writeln!(s, "  table digest: {}", self.digest);
        if let Some(fw) = &self.firewall {
            let _ = writeln!(
                s,
                "  firewall (emulated): {} states, digest {}",
                fw.states, fw.digest
            );
        }
        if !self.local.is_empty() {
            let _ = writeln!(s, "  firewall side: {}", kv(&self.local));
        }
        let nonzero: BTreeMap<_, _> = self.drops.iter().filter(|(_, v)| **v > 0).collect();
        if !nonzero.is_empty() {
            let _ = writeln!(
                s,
                "  drops: {}",
                nonzero
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        for p in &self.peers {
            let _ = writeln!(s);
            let _ = writeln!(s, "peer: {} ({})", p.name, p.public_key);
            let _ = writeln!(
                s,
                "  endpoint: {}",
                p.endpoint.as_deref().unwrap_or("(none)")
            );
            let _ = writeln!(
                s,
                "  session: {}",
                if p.established { "up" } else { "down" }
            );
            let _ = writeln!(
                s,
                "  latest handshake: {}",
                p.last_handshake_secs
                    .map_or("never".into(), |a| format!("{a:.0} seconds ago"))
            );
            let _ = writeln!(
                s,
                "  transfer: {} B received ({} packets), {} B sent ({} packets)",
                p.rx_bytes, p.rx_packets, p.tx_bytes, p.tx_packets
            );
            let _ = writeln!(
                s,
                "  sync: {} retransmits, {} resyncs{}, {} resend-queue overflows, its queue {:.1} ms",
                p.retransmits,
                p.resyncs,
                if p.resync_in_progress {
                    ", resync in progress"
                } else {
                    ""
                },
                p.sync.get("overflows").copied().unwrap_or(0),
                p.delay_us as f64 / 1000.0
            );
        }
        s
    }

    /// Prometheus text exposition.
    pub fn to_prometheus(&self) -> String {
        let mut s = String::new();
        let node = esc(&self.node);
        let _ = writeln!(
            s,
            "# HELP pfsync_gw_states States in the gateway's mirror table."
        );
        let _ = writeln!(s, "# TYPE pfsync_gw_states gauge");
        let _ = writeln!(s, "pfsync_gw_states{{node=\"{node}\"}} {}", self.states);
        let _ = writeln!(s, "# HELP pfsync_gw_info Static facts about the node.");
        let _ = writeln!(s, "# TYPE pfsync_gw_info gauge");
        let _ = writeln!(
            s,
            "pfsync_gw_info{{node=\"{node}\",dialect=\"{}\",digest=\"{}\"}} 1",
            esc(&self.dialect),
            esc(&self.digest)
        );
        // `…_now` entries are gauges (they go down): a family of their own, so Prometheus
        // does not read a decrease as a counter reset.
        let _ = writeln!(s, "# TYPE pfsync_gw_local_total counter");
        for (k, v) in self.local.iter().filter(|(k, _)| !k.ends_with("_now")) {
            let _ = writeln!(
                s,
                "pfsync_gw_local_total{{node=\"{node}\",what=\"{}\"}} {v}",
                esc(k)
            );
        }
        let _ = writeln!(s, "# TYPE pfsync_gw_local gauge");
        for (k, v) in self.local.iter().filter(|(k, _)| k.ends_with("_now")) {
            let _ = writeln!(
                s,
                "pfsync_gw_local{{node=\"{node}\",what=\"{}\"}} {v}",
                esc(k)
            );
        }
        let _ = writeln!(
            s,
            "# HELP pfsync_gw_drops_total Packets dropped, by reason."
        );
        let _ = writeln!(s, "# TYPE pfsync_gw_drops_total counter");
        for (k, v) in &self.drops {
            let _ = writeln!(
                s,
                "pfsync_gw_drops_total{{node=\"{node}\",reason=\"{}\"}} {v}",
                esc(k)
            );
        }
        type Series = (&'static str, &'static str, fn(&PeerView) -> f64);
        let per_peer: [Series; 9] = [
            ("pfsync_gw_peer_up", "gauge", |p| p.established as u8 as f64),
            ("pfsync_gw_peer_received_packets_total", "counter", |p| {
                p.rx_packets as f64
            }),
            ("pfsync_gw_peer_received_bytes_total", "counter", |p| {
                p.rx_bytes as f64
            }),
            ("pfsync_gw_peer_sent_packets_total", "counter", |p| {
                p.tx_packets as f64
            }),
            ("pfsync_gw_peer_sent_bytes_total", "counter", |p| {
                p.tx_bytes as f64
            }),
            ("pfsync_gw_peer_retransmits_total", "counter", |p| {
                p.retransmits as f64
            }),
            ("pfsync_gw_peer_resyncs_total", "counter", |p| {
                p.resyncs as f64
            }),
            ("pfsync_gw_peer_last_handshake_seconds", "gauge", |p| {
                p.last_handshake_secs.unwrap_or(-1.0)
            }),
            ("pfsync_gw_peer_queue_delay_seconds", "gauge", |p| {
                p.delay_us as f64 / 1e6
            }),
        ];
        // The sync stream's counters, a series per name (gauges apart, as for `local`).
        for (ty, gauge) in [("counter", false), ("gauge", true)] {
            let name = if gauge {
                "pfsync_gw_peer_sync"
            } else {
                "pfsync_gw_peer_sync_total"
            };
            let _ = writeln!(s, "# TYPE {name} {ty}");
            for p in &self.peers {
                for (k, v) in p.sync.iter().filter(|(k, _)| k.ends_with("_now") == gauge) {
                    let _ = writeln!(
                        s,
                        "{name}{{node=\"{node}\",peer=\"{}\",what=\"{}\"}} {v}",
                        esc(&p.name),
                        esc(k)
                    );
                }
            }
        }
        for (name, ty, f) in per_peer {
            let _ = writeln!(s, "# TYPE {name} {ty}");
            for p in &self.peers {
                let _ = writeln!(
                    s,
                    "{name}{{node=\"{node}\",peer=\"{}\"}} {}",
                    esc(&p.name),
                    f(p)
                );
            }
        }
        s
    }
}

fn kv(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A Prometheus label value: backslash, quote and newline escaped (the exposition format).
pub(crate) fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_has_per_peer_and_drop_series() {
        let mut st = Status {
            node: "gw-a".into(),
            states: 3,
            ..Default::default()
        };
        st.drops.insert("bad_mac1".into(), 7);
        st.peers.push(PeerView {
            name: "gw-b".into(),
            established: true,
            rx_packets: 5,
            delay_us: 2500,
            sync: [("overflows".into(), 4), ("unacked_now".into(), 9)].into(),
            ..Default::default()
        });
        let m = st.to_prometheus();
        let sync = "{node=\"gw-a\",peer=\"gw-b\",what=";
        assert!(
            m.contains(&format!("pfsync_gw_peer_sync_total{sync}\"overflows\"}} 4")),
            "{m}"
        );
        assert!(
            m.contains(&format!("pfsync_gw_peer_sync{sync}\"unacked_now\"}} 9")),
            "{m}"
        );
        assert!(!m.contains(&format!("pfsync_gw_peer_sync_total{sync}\"unacked_now\"")));
        assert!(
            st.to_text().contains("4 resend-queue overflows"),
            "{}",
            st.to_text()
        );
        assert!(
            m.contains("pfsync_gw_peer_queue_delay_seconds{node=\"gw-a\",peer=\"gw-b\"} 0.0025"),
            "{m}"
        );
        assert!(m.contains("pfsync_gw_states{node=\"gw-a\"} 3"), "{m}");
        assert!(m.contains("pfsync_gw_drops_total{node=\"gw-a\",reason=\"bad_mac1\"} 7"));
        assert!(m.contains("pfsync_gw_peer_up{node=\"gw-a\",peer=\"gw-b\"} 1"));
        assert!(m.contains("pfsync_gw_peer_received_packets_total{node=\"gw-a\",peer=\"gw-b\"} 5"));
    }

    #[test]
    fn json_roundtrip() {
        let st = Status {
            node: "x".into(),
            digest: "ab".into(),
            ..Default::default()
        };
        let j = serde_json::to_string(&st).unwrap();
        assert_eq!(serde_json::from_str::<Status>(&j).unwrap(), st);
    }
}
