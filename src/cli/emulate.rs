//! `pfsync-gw emulate`: run the pf emulator as its own process on a sync interface.
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {}

/// Run the subcommand; returns the process exit code.
pub fn run(_args: &EmulateArgs) -> i32 {
    eprintln!("emulate: not implemented yet");
    1
}
