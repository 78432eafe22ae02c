//! Shared oracle: accepted input must re-emit to packets that parse to the same messages.
use pfsync_gw::wire::*;

pub fn check(d: Dialect, data: &[u8]) {
    // The capture filter's shape test reads any bytes; what it would shed, when valid,
    // holds compressed updates and nothing else.
    let shed = UpdCRun::of(d).matches(data);
    let Ok(p) = Packet::new_checked(data, d) else {
        return;
    };
    if shed {
        assert!(p.messages().all(|m| matches!(m, Message::UpdC(_) | Message::Eof)));
    }
    assert!(p.len() <= data.len());
    let mut body = Vec::new();
    for m in p.messages() {
        let _ = m.to_string();
        if m != Message::Eof {
            body.push(m);
        }
    }
    let mut buf = vec![0u8; 65535];
    let mut again = Vec::new();
    let mut i = 0;
    while i < body.len() {
        let mut w = PacketWriter::new(d, &mut buf);
        w.set_checksum(p.checksum());
        while i < body.len() && w.push(&body[i]).expect("accepted message must re-emit") {
            i += 1;
        }
        assert!(!w.is_empty());
        let n = w.finish();
        let q = Packet::new_checked(&buf[..n], d).expect("re-emitted packet must parse");
        again.extend(q.messages().filter(|m| *m != Message::Eof));
    }
    assert_eq!(again, body);
}
