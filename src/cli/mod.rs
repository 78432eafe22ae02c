//! Command line: clap subcommands.
pub mod decode;
pub mod emulate;
pub mod pcap;
