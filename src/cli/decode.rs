//! `pfsync-gw decode`: print the pfsync messages in a pcap/pcapng capture.
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// Capture file (pcap or pcapng), or `-` for standard input.
    pub file: PathBuf,
    /// One JSON object per message (JSON Lines).
    #[arg(long)]
    pub json: bool,
    /// Force a dialect instead of auto-detecting it per packet.
    #[arg(long)]
    pub dialect: Option<String>,
}

/// Run the subcommand; returns the process exit code.
pub fn run(_args: &DecodeArgs) -> i32 {
    eprintln!("decode: not implemented yet");
    1
}
