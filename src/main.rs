// TEMPORARY (emulator branch): minimal wiring of `pfsync-gw emulate` for its tests; the real
// top-level CLI on main replaces this file.
use clap::Parser;

#[derive(Parser)]
#[command(name = "pfsync-gw")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Run the pf emulator on a sync interface.
    Emulate(pfsync_gw::cli::emulate::EmulateArgs),
}

fn main() {
    let code = match Cli::parse().cmd {
        Cmd::Emulate(a) => pfsync_gw::cli::emulate::run(&a),
    };
    std::process::exit(code);
}
