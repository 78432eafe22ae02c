//! pfsync codec: zero-copy packet views and owned representations, per dialect.
pub mod repr;
pub use repr::*;
