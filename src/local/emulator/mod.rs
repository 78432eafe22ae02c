//! The pf emulator: an in-process stand-in for a pf kernel and its pfsync(4).
