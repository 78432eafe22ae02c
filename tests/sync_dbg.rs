mod sync_sim;
use std::time::Duration;
use pfsync_gw::wire::{Dialect, Message, StateId};
use sync_sim::{config, Firewall, Net, Rng};
#[test]
fn dbg() {
    let ob = Dialect::OpenbsdV6;
    let mut net = Net::new(vec![config(1, ob), config(2, ob)], 9);
    let now = net.now;
    let mut fw = Firewall::new(0xa, ob);
    let mut rng = Rng::new(1);
    for _ in 0..200 {
        let s = fw.new_state(&mut rng);
        for r in &mut net.nodes { r.table_mut().apply(&Message::Ins(s), now); }
    }
    let id = StateId::new(77, 0xa);
    let mut s = fw.states[&id];
    s.src.seqlo = s.src.seqlo.wrapping_add(10);
    net.nodes[0].table_mut().apply(&Message::Upd(s), now);
    let t0 = net.nodes[0].table(); let t1 = net.nodes[1].table();
    let diff: Vec<usize> = (0..t0.leaf_count()).filter(|&l| t0.leaf_digest(l) != t1.leaf_digest(l)).collect();
    eprintln!("diff leaves {:?} leaf of id {}", diff, t0.leaf_of(id));
    net.all_up();
    for _ in 0..30 {
        net.run_for(Duration::from_millis(100));
        let t0 = net.nodes[0].table(); let t1 = net.nodes[1].table();
        eprintln!("{} {} a={:?} b={:?}", t0.digest(), t1.digest(), t0.get(id).map(|e| e.raw().src.seqlo), t1.get(id).map(|e| e.raw().src.seqlo));
        let diff: Vec<usize> = (0..t0.leaf_count()).filter(|&l| t0.leaf_digest(l) != t1.leaf_digest(l)).collect();
        eprintln!("diff leaves {:?} {:?}", diff, net.nodes[0].peer_stats(1).unwrap().tx_records);
    }
}
