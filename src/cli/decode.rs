//! `pfsync-gw decode`: print the pfsync messages in a pcap/pcapng capture.
//!
//! Text output follows the spirit of BSD `tcpdump -vvv` on pfsync: one line per packet, one
//! indented line (plus a peer line for states) per message. `--json` prints JSON Lines, one
//! object per message; the schema is documented in `docs/TRANSLATION.md` ("decode --json").

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::pcap::{CaptureError, CaptureReader, Extracted};
use crate::wire::{
    self, display, name_str, AddrFamily, BusStatus, Dialect, Message, Packet, PeerRepr,
    StateKeyRepr, StateRepr, UpdCRepr,
};

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Capture file (pcap or pcapng), or `-` for standard input.
    pub file: PathBuf,
    /// One JSON object per message (JSON Lines).
    #[arg(long)]
    pub json: bool,
    /// Force a dialect instead of auto-detecting it per packet
    /// (netbsd-v3, openbsd-v6, freebsd-1301, freebsd-1400, freebsd-1500).
    #[arg(long)]
    pub dialect: Option<String>,
}

/// Options of [`decode_to`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DecodeOptions {
    pub json: bool,
    /// Parse every packet as this dialect instead of detecting it.
    pub dialect: Option<Dialect>,
}

/// Counters over one capture.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// All frames in the capture.
    pub frames: u64,
    /// Frames that carried pfsync (valid or not).
    pub pfsync_packets: u64,
    /// Messages printed.
    pub messages: u64,
    /// pfsync packets that failed to parse.
    pub malformed: u64,
}

/// Why decoding stopped.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input is not a readable capture (or breaks off mid-record).
    #[error("{0}")]
    Capture(#[from] CaptureError),
    /// Writing the output failed (e.g. a closed pipe).
    #[error("output: {0}")]
    Output(io::Error),
}

/// Decode a whole capture from `input`, writing text or JSON Lines to `out`.
///
/// Malformed pfsync packets are reported in the output and decoding continues; only an
/// unreadable capture or output failure is an error. Frames decoded before a capture error
/// have already been written.
pub fn decode_to<R: Read, W: Write>(
    input: R,
    opts: &DecodeOptions,
    mut out: W,
) -> Result<Summary, DecodeError> {
    let mut reader = CaptureReader::new(input)?;
    let mut sum = Summary::default();
    let mut index: u64 = 0;
    let mut line = String::new();
    while let Some(frame) = reader.next_frame() {
        let frame = frame?;
        let packet = index;
        index += 1;
        sum.frames += 1;
        line.clear();
        match super::pcap::extract_pfsync(frame.linktype, &frame.data) {
            Extracted::Other => continue,
            Extracted::Malformed(why) => {
                sum.pfsync_packets += 1;
                sum.malformed += 1;
                report_error(&mut line, opts, packet, frame.timestamp, None, &why);
            }
            Extracted::Pfsync {
                src, dst, payload, ..
            } => {
                sum.pfsync_packets += 1;
                decode_packet(
                    &mut line,
                    &mut sum,
                    opts,
                    packet,
                    frame.timestamp,
                    (src, dst),
                    payload,
                );
            }
        }
        out.write_all(line.as_bytes())
            .map_err(DecodeError::Output)?;
    }
    out.flush().map_err(DecodeError::Output)?;
    Ok(sum)
}

fn decode_packet(
    line: &mut String,
    sum: &mut Summary,
    opts: &DecodeOptions,
    packet: u64,
    ts: Duration,
    (src, dst): (Option<IpAddr>, Option<IpAddr>),
    payload: &[u8],
) {
    let dialect = match opts.dialect {
        Some(d) => d,
        None => match wire::detect_dialect(payload) {
            Ok(d) => d,
            Err(e) => {
                sum.malformed += 1;
                return report_error(line, opts, packet, ts, None, &e.to_string());
            }
        },
    };
    let pkt = match Packet::new_checked(payload, dialect) {
        Ok(p) => p,
        Err(e) => {
            sum.malformed += 1;
            return report_error(line, opts, packet, ts, Some(dialect), &e.to_string());
        }
    };
    if !opts.json {
        let host = |a: Option<IpAddr>| a.map_or_else(|| "-".to_string(), |a| a.to_string());
        let _ = writeln!(
            line,
            "{packet} {} {} > {}: pfsync {dialect} len {}",
            fmt_ts(ts),
            host(src),
            host(dst),
            pkt.len()
        );
    }
    for (i, msg) in pkt.messages().enumerate() {
        sum.messages += 1;
        if opts.json {
            let mut v = message_json(dialect, &msg);
            if let Value::Object(m) = &mut v {
                m.insert("packet".into(), json!(packet));
                m.insert("msg".into(), json!(i));
            }
            let _ = writeln!(line, "{v}");
        } else {
            format_message(line, &msg);
        }
    }
}

fn report_error(
    line: &mut String,
    opts: &DecodeOptions,
    packet: u64,
    ts: Duration,
    dialect: Option<Dialect>,
    err: &str,
) {
    if opts.json {
        let mut m = Map::new();
        m.insert("packet".into(), json!(packet));
        if let Some(d) = dialect {
            m.insert("dialect".into(), json!(d.name()));
        }
        m.insert("error".into(), json!(err));
        let _ = writeln!(line, "{}", Value::Object(m));
    } else {
        let d = dialect.map_or(String::new(), |d| format!(" {d}"));
        let _ = writeln!(line, "{packet} {} pfsync{d} [malformed: {err}]", fmt_ts(ts));
    }
}

fn fmt_ts(ts: Duration) -> String {
    format!("{}.{:06}", ts.as_secs(), ts.subsec_micros())
}

/// Run the subcommand; returns the process exit code (0 ok, 2 bad input or usage).
pub fn run(args: &DecodeArgs) -> i32 {
    let dialect = match args.dialect.as_deref() {
        None => None,
        Some(name) => match Dialect::from_name(name) {
            Some(d) => Some(d),
            None => {
                let names: Vec<_> = Dialect::ALL.iter().map(|d| d.name()).collect();
                eprintln!(
                    "decode: unknown dialect {name:?} (expected one of {})",
                    names.join(", ")
                );
                return 2;
            }
        },
    };
    let opts = DecodeOptions {
        json: args.json,
        dialect,
    };
    let stdout = io::stdout().lock();
    let out = io::BufWriter::new(stdout);
    let res = if args.file.as_os_str() == "-" {
        decode_to(io::stdin().lock(), &opts, out)
    } else {
        match std::fs::File::open(&args.file) {
            Ok(f) => decode_to(io::BufReader::new(f), &opts, out),
            Err(e) => {
                eprintln!("decode: cannot open {}: {e}", args.file.display());
                return 2;
            }
        }
    };
    match res {
        Ok(_) => 0,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(DecodeError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("decode: {}: {e}", args.file.display());
            2
        }
    }
}

// ---- JSON ----------------------------------------------------------------------------------

fn hex_id(id: u64) -> String {
    format!("{id:016x}")
}

fn hex_creator(c: u32) -> String {
    format!("{c:08x}")
}

/// Text form of a `pf_addr` for `af` (raw hex when the family is unknown).
pub fn addr_str(addr: &[u8; 16], af: AddrFamily) -> String {
    match af {
        AddrFamily::Inet => Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]).to_string(),
        AddrFamily::Inet6 => Ipv6Addr::from(*addr).to_string(),
        _ => addr.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        }),
    }
}

/// Index of the initiator's side in a `pf_state_key`: pf stores the creating packet's source
/// at `addr[sidx]` with `sidx = 0` for `in` and `1` for `out` (`pf_setup_pdesc`).
fn src_index(direction: u8) -> usize {
    usize::from(direction == 2)
}

/// Address family of key `k` (0 wire, 1 stack) of a state.
fn key_af(s: &StateRepr, k: usize) -> AddrFamily {
    match (s.key[k].af, s.af_1500[k], s.af) {
        (AddrFamily::Unspec, AddrFamily::Unspec, af) => af,
        (AddrFamily::Unspec, af, _) => af,
        (af, _, _) => af,
    }
}

fn state_af(s: &StateRepr) -> AddrFamily {
    if s.af == AddrFamily::Unspec {
        s.af_1500[0]
    } else {
        s.af
    }
}

fn state_proto(s: &StateRepr) -> u8 {
    if s.proto == 0 {
        s.proto_1500[0]
    } else {
        s.proto
    }
}

fn key_json(s: &StateRepr, k: usize) -> Value {
    let key: &StateKeyRepr = &s.key[k];
    let af = key_af(s, k);
    let (si, di) = (src_index(s.direction), 1 - src_index(s.direction));
    let mut m = Map::new();
    m.insert("src".into(), json!(addr_str(&key.addr[si], af)));
    m.insert("sport".into(), json!(key.port[si]));
    m.insert("dst".into(), json!(addr_str(&key.addr[di], af)));
    m.insert("dport".into(), json!(key.port[di]));
    if af != state_af(s) {
        m.insert("af".into(), json!(af.name()));
    }
    if key.rdomain != 0 {
        m.insert("rdomain".into(), json!(key.rdomain));
    }
    Value::Object(m)
}

fn peer_json(p: &PeerRepr) -> Value {
    json!({
        "state": p.state,
        "seqlo": p.seqlo,
        "seqhi": p.seqhi,
        "seqdiff": p.seqdiff,
        "max_win": p.max_win,
        "mss": p.mss,
        "wscale": p.wscale,
    })
}

fn direction_json(d: u8) -> Value {
    match d {
        1 => json!("in"),
        2 => json!("out"),
        d => json!(d),
    }
}

fn state_json(m: &mut Map<String, Value>, s: &StateRepr) {
    m.insert("id".into(), json!(hex_id(s.id.id)));
    m.insert("creatorid".into(), json!(hex_creator(s.id.creator)));
    m.insert("ifname".into(), json!(name_str(&s.ifname)));
    m.insert("af".into(), json!(state_af(s).name()));
    m.insert("proto".into(), json!(state_proto(s)));
    m.insert("direction".into(), direction_json(s.direction));
    m.insert("wire".into(), key_json(s, 0));
    m.insert("stack".into(), key_json(s, 1));
    m.insert("src_peer".into(), peer_json(&s.src));
    m.insert("dst_peer".into(), peer_json(&s.dst));
    m.insert("timeout".into(), json!(s.timeout));
    m.insert("expire".into(), json!(s.expire));
    m.insert("creation".into(), json!(s.creation));
    m.insert("packets".into(), json!(s.packets));
    m.insert("bytes".into(), json!(s.bytes));
    m.insert("rule".into(), json!(s.rule));
    m.insert("anchor".into(), json!(s.anchor));
    m.insert("nat_rule".into(), json!(s.nat_rule));
    m.insert("log".into(), json!(s.log));
    m.insert("state_flags".into(), json!(s.state_flags));
    m.insert("sync_flags".into(), json!(s.sync_flags));
    m.insert("allow_opts".into(), json!(s.allow_opts));
    m.insert("rt".into(), json!(s.rt));
    m.insert("rt_addr".into(), json!(addr_str(&s.rt_addr, state_af(s))));
    m.insert("rt_ifname".into(), json!(name_str(&s.rt_ifname)));
    m.insert("rtableid".into(), json!(s.rtableid));
    m.insert("max_mss".into(), json!(s.max_mss));
    m.insert("min_ttl".into(), json!(s.min_ttl));
    m.insert("set_tos".into(), json!(s.set_tos));
    m.insert("set_prio".into(), json!(s.set_prio));
    m.insert("updates".into(), json!(s.updates));
}

fn upd_c_json(m: &mut Map<String, Value>, u: &UpdCRepr) {
    m.insert("id".into(), json!(hex_id(u.id.id)));
    m.insert("creatorid".into(), json!(hex_creator(u.id.creator)));
    m.insert("src_peer".into(), peer_json(&u.src));
    m.insert("dst_peer".into(), peer_json(&u.dst));
    m.insert("timeout".into(), json!(u.timeout));
    m.insert("expire".into(), json!(u.expire));
    m.insert("flags".into(), json!(u.flags));
}

/// The JSON object for one message (without the `packet`/`msg` position fields).
pub fn message_json(dialect: Dialect, msg: &Message) -> Value {
    let mut m = Map::new();
    m.insert("dialect".into(), json!(dialect.name()));
    m.insert("action".into(), json!(msg.action_name()));
    match msg {
        Message::Clr { ifname, creator } => {
            m.insert("creatorid".into(), json!(hex_creator(*creator)));
            m.insert("ifname".into(), json!(name_str(ifname)));
        }
        Message::Ins(s) | Message::Upd(s) | Message::Del(s) => state_json(&mut m, s),
        Message::UpdC(u) => upd_c_json(&mut m, u),
        Message::InsAck(id) | Message::UpdReq(id) | Message::DelC(id) => {
            m.insert("id".into(), json!(hex_id(id.id)));
            m.insert("creatorid".into(), json!(hex_creator(id.creator)));
            if matches!(msg, Message::UpdReq(_)) {
                m.insert("bulk".into(), json!(*id == wire::StateId::BULK));
            }
        }
        Message::Bus {
            creator,
            endtime,
            status,
        } => {
            m.insert("creatorid".into(), json!(hex_creator(*creator)));
            m.insert("status".into(), bus_status_json(*status));
            m.insert("endtime".into(), json!(endtime));
        }
        Message::Tdb(t) => {
            m.insert("spi".into(), json!(format!("{:08x}", t.spi)));
            m.insert("rpl".into(), json!(t.rpl));
            m.insert("cur_bytes".into(), json!(t.cur_bytes));
            m.insert("sproto".into(), json!(t.sproto));
            m.insert("updates".into(), json!(t.updates));
            m.insert("rdomain".into(), json!(t.rdomain));
        }
        Message::Eof => {}
    }
    Value::Object(m)
}

fn bus_status_json(s: BusStatus) -> Value {
    match s {
        BusStatus::Start => json!("start"),
        BusStatus::End => json!("end"),
        BusStatus::Other(v) => json!(v),
    }
}

// ---- text ----------------------------------------------------------------------------------

fn peer_state_name(proto: u8, st: u8) -> String {
    display::peer_state_name(proto, st).map_or_else(|| st.to_string(), str::to_string)
}

fn proto_name(p: u8) -> String {
    display::proto_name(p).map_or_else(|| format!("proto-{p}"), str::to_string)
}

fn host_port(addr: &[u8; 16], port: u16, af: AddrFamily) -> String {
    let a = addr_str(addr, af);
    if af == AddrFamily::Inet6 {
        format!("[{a}]:{port}")
    } else {
        format!("{a}:{port}")
    }
}

fn key_text(s: &StateRepr, k: usize) -> String {
    let key = &s.key[k];
    let af = key_af(s, k);
    let si = src_index(s.direction);
    format!(
        "{} -> {}",
        host_port(&key.addr[si], key.port[si], af),
        host_port(&key.addr[1 - si], key.port[1 - si], af)
    )
}

fn peer_text(p: &PeerRepr, proto: u8) -> String {
    let mut t = peer_state_name(proto, p.state);
    if proto == 6 {
        let _ = write!(
            t,
            " [{} + {}](+{}) wscale {} max_win {} mss {}",
            p.seqlo,
            p.seqhi.wrapping_sub(p.seqlo),
            p.seqdiff,
            p.wscale & 0x0f,
            p.max_win,
            p.mss
        );
    }
    t
}

/// Append the indented text lines for one message.
pub fn format_message(out: &mut String, msg: &Message) {
    let act = msg.action_name();
    match msg {
        Message::Clr { ifname, creator } => {
            let ifn = name_str(ifname);
            let ifn = if ifn.is_empty() { "all".into() } else { ifn };
            let _ = writeln!(out, "\t{act} creatorid {creator:08x} ifname {ifn}");
        }
        Message::Ins(s) | Message::Upd(s) | Message::Del(s) => {
            let proto = state_proto(s);
            let dir = match s.direction {
                1 => "in".to_string(),
                2 => "out".to_string(),
                d => format!("dir-{d}"),
            };
            let _ = writeln!(
                out,
                "\t{act} id {} creatorid {:08x} {} {} {} {dir} wire {} stack {} timeout {} expire {}s age {}s",
                hex_id(s.id.id),
                s.id.creator,
                name_str(&s.ifname),
                state_af(s).name(),
                proto_name(proto),
                key_text(s, 0),
                key_text(s, 1),
                s.timeout,
                s.expire,
                s.creation,
            );
            let _ = writeln!(
                out,
                "\t    src {} dst {} pkts {}:{} bytes {}:{} rule {} flags 0x{:04x}",
                peer_text(&s.src, proto),
                peer_text(&s.dst, proto),
                s.packets[0],
                s.packets[1],
                s.bytes[0],
                s.bytes[1],
                s.rule as i32,
                s.state_flags
            );
        }
        Message::UpdC(u) => {
            let _ = writeln!(
                out,
                "\t{act} id {} creatorid {:08x} timeout {} expire {}s src {} dst {}",
                hex_id(u.id.id),
                u.id.creator,
                u.timeout,
                u.expire,
                peer_text_generic(&u.src),
                peer_text_generic(&u.dst),
            );
        }
        Message::UpdReq(id) if *id == wire::StateId::BULK => {
            let _ = writeln!(out, "\t{act} bulk update request");
        }
        Message::InsAck(id) | Message::UpdReq(id) | Message::DelC(id) => {
            let _ = writeln!(
                out,
                "\t{act} id {} creatorid {:08x}",
                hex_id(id.id),
                id.creator
            );
        }
        Message::Bus {
            creator,
            endtime,
            status,
        } => {
            let st = match status {
                BusStatus::Start => "start".to_string(),
                BusStatus::End => "end".to_string(),
                BusStatus::Other(v) => format!("status-{v}"),
            };
            let _ = writeln!(
                out,
                "\t{act} creatorid {creator:08x} {st} endtime {endtime}"
            );
        }
        Message::Tdb(t) => {
            let _ = writeln!(
                out,
                "\t{act} spi 0x{:08x} rpl {} cur_bytes {} sproto {}",
                t.spi, t.rpl, t.cur_bytes, t.sproto
            );
        }
        Message::Eof => {
            let _ = writeln!(out, "\t{act}");
        }
    }
}

/// UPD_C carries no protocol, so peers are shown numerically.
fn peer_text_generic(p: &PeerRepr) -> String {
    format!(
        "state {} [{} + {}] wscale {} max_win {} mss {}",
        p.state,
        p.seqlo,
        p.seqhi.wrapping_sub(p.seqlo),
        p.wscale & 0x0f,
        p.max_win,
        p.mss
    )
}
