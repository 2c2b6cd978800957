//! What only the `berth` binary needs: the commands that talk to a registry over HTTP
//! (`resolve`, `inspect`, `mirror`, `verify`, accounts with `--registry`). The library
//! (`berth_server`) never uses these modules.

pub mod accounts;
pub mod client;
pub mod creds;
pub mod gc;
pub mod mirror;
pub mod quota;
pub mod retention;
pub mod verify;
