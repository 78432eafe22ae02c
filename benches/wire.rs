//! Codec throughput: parse (validate + iterate) and emit, in messages per second.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use pfsync_gw::wire::*;

fn upd_c(i: u64) -> Message {
    let peer = PeerRepr {
        seqlo: 0x1122_3344 + i as u32,
        seqhi: 0x1123_3344,
        max_win: 65535,
        mss: 1460,
        state: 4,
        wscale: 0x87,
        ..Default::default()
    };
    Message::UpdC(UpdCRepr {
        id: StateId::new(i, 0xdead_beef),
        src: peer,
        dst: peer,
        expire: 0,
        timeout: 2,
        flags: 0,
    })
}

fn full(d: Dialect, i: u64) -> Message {
    let mut s = StateRepr {
        id: StateId::new(i, 0xdead_beef),
        ifname: name_field("em0"),
        af: AddrFamily::Inet,
        proto: 6,
        direction: 2,
        timeout: 2,
        expire: 86400,
        packets: [10, 20],
        bytes: [1000, 2000],
        ..StateRepr::default()
    };
    s.key[0].addr[0][..4].copy_from_slice(&[10, 0, 0, 2]);
    s.key[0].addr[1][..4].copy_from_slice(&[10, 0, 0, 1]);
    s.key[0].port = [80, 1234 + i as u16];
    s.key[1] = s.key[0];
    if d == Dialect::Freebsd1500 {
        s.af_1500 = [AddrFamily::Inet; 3];
        s.proto_1500 = [6, 6];
    }
    Message::Upd(s)
}

/// One full packet (MTU 1500) of `gen` messages; returns bytes and message count.
fn packet(d: Dialect, gen: impl Fn(u64) -> Message) -> (Vec<u8>, u64) {
    let mut buf = vec![0u8; 1480];
    let mut w = PacketWriter::new(d, &mut buf);
    let mut n = 0;
    while w.push(&gen(n)).unwrap() {
        n += 1;
    }
    let len = w.finish();
    buf.truncate(len);
    (buf, n)
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mut cases = Vec::new();
    for d in [Dialect::OpenbsdV6, Dialect::Freebsd1400] {
        cases.push((format!("upd_c/{d}"), d, packet(d, upd_c)));
    }
    for d in Dialect::ALL {
        cases.push((format!("full/{d}"), d, packet(d, |i| full(d, i))));
    }
    for (name, d, (bytes, n)) in &cases {
        g.throughput(Throughput::Elements(*n));
        g.bench_function(name.as_str(), |b| {
            b.iter(|| {
                let p = Packet::new_checked(black_box(&bytes[..]), *d).unwrap();
                let mut k = 0u64;
                for m in p.messages() {
                    if let Some(id) = m.state_id() {
                        k ^= id.id;
                    }
                }
                k
            })
        });
    }
    g.finish();
}

fn emit(c: &mut Criterion) {
    let mut g = c.benchmark_group("emit");
    for d in [Dialect::OpenbsdV6, Dialect::Freebsd1400] {
        let msgs: Vec<Message> = (0..17).map(upd_c).collect();
        g.throughput(Throughput::Elements(17));
        g.bench_function(format!("upd_c/{d}"), |b| {
            let mut buf = [0u8; 1480];
            b.iter(|| {
                let mut w = PacketWriter::new(d, &mut buf);
                for m in &msgs {
                    w.push(black_box(m)).unwrap();
                }
                w.finish()
            })
        });
    }
    for d in Dialect::ALL {
        let (_, n) = packet(d, |i| full(d, i));
        let msgs: Vec<Message> = (0..n).map(|i| full(d, i)).collect();
        g.throughput(Throughput::Elements(n));
        g.bench_function(format!("full/{d}"), |b| {
            let mut buf = [0u8; 1480];
            b.iter(|| {
                let mut w = PacketWriter::new(d, &mut buf);
                for m in &msgs {
                    w.push(black_box(m)).unwrap();
                }
                w.finish()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, parse, emit);
criterion_main!(benches);
