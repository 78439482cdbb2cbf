//! wire (stub).
