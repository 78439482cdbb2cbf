//! The journal: per-file dirty byte ranges and the ordered metadata-operation log (stub).
pub mod op;
