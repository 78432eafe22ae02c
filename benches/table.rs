//! Table hot paths: applying compressed updates and reading the digest.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pfsync_gw::table::StateTable;
use pfsync_gw::wire::{AddrFamily, Message, StateId, StateRepr, UpdCRepr};

fn filled(n: u64) -> (StateTable, Instant) {
    let now = Instant::now();
    let mut t = StateTable::default();
    for i in 0..n {
        let mut s = StateRepr {
            id: StateId::new(i, 0xdead_beef),
            proto: 6,
            af: AddrFamily::Inet,
            direction: 1,
            timeout: 2,
            expire: 86_400,
            ..Default::default()
        };
        s.src.state = 4;
        s.dst.state = 4;
        t.apply(&Message::Ins(s), now);
    }
    (t, now)
}

fn bench(c: &mut Criterion) {
    let (mut t, now) = filled(100_000);
    let mut seq = 0u32;
    c.bench_function("apply upd_c (100k states)", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut u = UpdCRepr {
                id: StateId::new(seq as u64 % 100_000, 0xdead_beef),
                timeout: 2,
                ..Default::default()
            };
            u.src.state = 4;
            u.dst.state = 4;
            u.src.seqlo = seq;
            u.dst.seqlo = seq;
            black_box(t.apply(&Message::UpdC(u), now))
        })
    });
    c.bench_function("digest", |b| b.iter(|| black_box(t.digest())));
    c.bench_function("range digest (64 leaves)", |b| {
        b.iter(|| black_box(t.range_digest(black_box(128), 64)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
