//! Configuration (TOML).
