//! fs (stub).
