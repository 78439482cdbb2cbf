//! Applier tests.
