//! `pfsync-gw emulate` processes playing the firewalls (churn, table digests).

use std::path::PathBuf;

use serde_json::Value;

use super::gw::{bin, Net, SYNC_IF};

/// How an emulated firewall behaves.
#[derive(Debug, Clone)]
pub struct EmuOpts {
    pub hostid: u32,
    /// State creations per second while churning.
    pub rate: u32,
    /// Stop churning after this many seconds (0: no churn).
    pub churn_for: u32,
    pub initial_states: u32,
    /// `set limit states`: own and imported together.
    pub max_states: u32,
    /// Send unicast here instead of the group (pf's `syncpeer`).
    pub syncpeer: Option<String>,
    /// Ask for a bulk update at start (pf does when pfsync comes up).
    pub bulk: bool,
}

impl EmuOpts {
    pub fn new(hostid: u32) -> EmuOpts {
        EmuOpts {
            hostid,
            rate: 0,
            churn_for: 0,
            initial_states: 0,
            max_states: 400_000,
            syncpeer: None,
            bulk: true,
        }
    }
}

/// The emulator's periodic status file, as far as the tests read it.
#[derive(Debug, Clone)]
pub struct EmuStatus {
    pub states: u64,
    pub digest: String,
    pub churning: bool,
    pub raw: Value,
}

impl EmuStatus {
    /// A counter anywhere in the document by key (`drops.badttl`, `received_packets`…).
    pub fn counter(&self, path: &str) -> u64 {
        let mut v = &self.raw;
        for k in path.split('.') {
            v = match v.get(k) {
                Some(x) => x,
                None => return 0,
            };
        }
        v.as_u64().unwrap_or(0)
    }
}

pub fn status_file(net: &Net, name: &str) -> PathBuf {
    net.lab.path(&format!("{name}.status.json"))
}

/// Start an emulator named `name` in namespace `ns` on `ifname`.
pub fn start_emu_in(net: &Net, name: &str, ns: &str, ifname: &str, o: &EmuOpts) {
    let sf = status_file(net, name);
    let _ = std::fs::remove_file(&sf);
    let mut args: Vec<String> = vec![
        "emulate".into(),
        "--interface".into(),
        ifname.into(),
        "--dialect".into(),
        "openbsd-v6".into(),
        "--hostid".into(),
        o.hostid.to_string(),
        "--rate".into(),
        o.rate.to_string(),
        "--churn-for".into(),
        o.churn_for.to_string(),
        "--initial-states".into(),
        o.initial_states.to_string(),
        "--max-states".into(),
        o.max_states.to_string(),
        "--status-file".into(),
        sf.display().to_string(),
    ];
    if let Some(p) = &o.syncpeer {
        args.push("--syncpeer".into());
        args.push(p.clone());
    }
    if o.bulk {
        args.push("--bulk".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    net.lab
        .spawn(name, ns, bin(), &args, &[("RUST_LOG", "info")]);
}

/// Start site `i`'s emulated firewall (`fw-<site>`) on its sync interface.
pub fn start_emu(net: &Net, i: usize, o: &EmuOpts) {
    let s = net.site(i);
    start_emu_in(net, &s.emu(), &s.fw_ns.clone(), SYNC_IF, o);
}

/// The latest status file of emulator `name`, if written yet.
pub fn emu_status(net: &Net, name: &str) -> Option<EmuStatus> {
    let text = std::fs::read_to_string(status_file(net, name)).ok()?;
    let raw: Value = serde_json::from_str(&text).ok()?;
    Some(EmuStatus {
        states: raw.get("states")?.as_u64()?,
        digest: raw.get("digest")?.as_str()?.to_string(),
        churning: raw
            .get("churning")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        raw,
    })
}

/// Wait until none of `names` churns any more (their `--churn-for` ran out).
pub fn wait_churn_stopped(net: &Net, names: &[String], timeout: std::time::Duration) {
    super::poll::wait_for("churn to stop", timeout, |last| {
        let all = names
            .iter()
            .map(|n| emu_status(net, n).map(|s| !s.churning))
            .collect::<Option<Vec<bool>>>()?;
        *last = format!("{names:?} stopped: {all:?}");
        all.iter().all(|s| *s).then_some(())
    });
}
