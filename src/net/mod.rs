//! net (stub).
