//! Command line: clap subcommands. Each returns a process exit code; 2 means bad input
//! (config, key or capture files), printed with the file, field and reason.

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{Config, Key};

pub mod bench;
pub mod decode;
pub mod demo;
pub mod emulate;
pub mod pcap;
pub mod perfnet;

pub use crate::config::EXIT_BAD_INPUT;

#[derive(Debug, Parser)]
#[command(
    name = "pfsync-gw",
    version,
    about = "Authenticated, encrypted, reliable pfsync relay between pf firewalls"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a private key (base64, like `wg genkey`).
    Keygen {
        /// Write to FILE (created with mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Read a private key on standard input, print its public key (like `wg pubkey`).
    Pubkey,
    /// Generate a preshared key (like `wg genpsk`).
    Genpsk {
        /// Write to FILE (created with mode 0600) instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Validate a configuration file and explain what it sets up.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the gateway daemon.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Show a running daemon's peers, counters and table digest.
    Status {
        /// Control socket of the daemon (default: from --config, else /run/pfsync-gw.sock).
        #[arg(long, short)]
        socket: Option<PathBuf>,
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Decode pfsync packets in a pcap/pcapng capture.
    Decode(decode::DecodeArgs),
    /// Measure the data path against baselines taken in the same run.
    Bench(bench::BenchArgs),
    /// Two gateways with emulated firewalls in one process: see it work in a minute.
    Demo(demo::DemoArgs),
    /// Run the pf emulator on a sync interface (a testbed host playing a firewall).
    Emulate(emulate::EmulateArgs),
    /// Namespace benchmark load generator (fw-a sender, fw-b receiver); see
    /// scripts/perf-netns.sh.
    #[command(hide = true)]
    PerfLoad(perfnet::LoadArgs),
    /// Namespace benchmark baseline: plain raw 240 <-> UDP relay, no crypto.
    #[command(hide = true)]
    PerfRelay(perfnet::RelayArgs),
}

pub fn main() -> i32 {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { out } => write_key(Key::generate(), out),
        Command::Genpsk { out } => write_key(Key::generate_psk(), out),
        Command::Pubkey => pubkey(),
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", c.explain());
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_BAD_INPUT
            }
        },
        Command::Run { config, log_json } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_BAD_INPUT;
                }
            };
            init_logging(log_json);
            crate::node::run_daemon(cfg)
        }
        Command::Status {
            socket,
            config,
            json,
        } => crate::node::control::status_command(socket, config, json),
        Command::Decode(args) => decode::run(&args),
        Command::Emulate(args) => emulate::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::PerfLoad(args) => perfnet::run_load(&args),
        Command::PerfRelay(args) => perfnet::run_relay(&args),
    }
}

/// tracing to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only on a terminal (and never with NO_COLOR): escape codes in a log file or a
    // journal are noise.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

fn write_key(key: Key, out: Option<PathBuf>) -> i32 {
    match out {
        None => {
            println!("{}", key.to_base64());
            0
        }
        Some(p) => match key.write_file(&p) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: cannot create key file {}: {e}", p.display());
                EXIT_BAD_INPUT
            }
        },
    }
}

fn pubkey() -> i32 {
    let mut s = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut s) {
        eprintln!("error: reading standard input: {e}");
        return EXIT_BAD_INPUT;
    }
    match Key::from_base64(&s) {
        Ok(k) => {
            let _ = writeln!(std::io::stdout(), "{}", k.public().to_base64());
            0
        }
        Err(e) => {
            eprintln!("error: standard input: {e}");
            EXIT_BAD_INPUT
        }
    }
}
