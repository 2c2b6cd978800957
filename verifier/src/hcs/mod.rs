//! The `hcs` runner: boots Windows images through the Host Compute Service.
//!
//! (Being written: see docs/VERIFY.md.)
