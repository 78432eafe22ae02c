fn main() {
    std::process::exit(pfsync_gw::cli::main());
}
