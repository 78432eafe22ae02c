//! Packet framing per dialect: header, subheaders, message iteration and packet building.

use super::{Dialect, Message, Result};

/// Infer the dialect of a packet starting at `pfsync_header`.
pub fn detect_dialect(buf: &[u8]) -> Result<Dialect> {
    let _ = buf;
    todo!()
}

/// Size of `msg`'s body in `dialect`, or `None` if the dialect cannot carry it.
pub fn message_wire_len(dialect: Dialect, msg: &Message) -> Option<usize> {
    let _ = (dialect, msg);
    todo!()
}

/// A validated, zero-copy view over one whole pfsync packet of one dialect.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
    dialect: Dialect,
    len: usize,
}

impl<T: AsRef<[u8]>> Packet<T> {
    pub fn new_checked(buffer: T, dialect: Dialect) -> Result<Packet<T>> {
        let _ = (&buffer, dialect);
        todo!()
    }
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn messages(&self) -> Messages<'_> {
        todo!()
    }
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

/// Iterator over the messages of a validated [`Packet`].
#[derive(Debug, Clone)]
pub struct Messages<'a> {
    buf: &'a [u8],
    dialect: Dialect,
}

impl Iterator for Messages<'_> {
    type Item = Message;
    fn next(&mut self) -> Option<Message> {
        let _ = (self.buf, self.dialect);
        todo!()
    }
}

/// Builds packets of one dialect into a caller buffer.
#[derive(Debug)]
pub struct PacketWriter<'a> {
    dialect: Dialect,
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> PacketWriter<'a> {
    pub fn new(dialect: Dialect, buf: &'a mut [u8]) -> PacketWriter<'a> {
        PacketWriter {
            dialect,
            buf,
            pos: 0,
        }
    }
    pub fn push(&mut self, msg: &Message) -> Result<bool> {
        let _ = (msg, self.dialect, &self.buf, self.pos);
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
    pub fn finish(self) -> usize {
        todo!()
    }
}
