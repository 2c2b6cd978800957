//! Access control for berth: Docker registry token scopes, JWT minting and verification,
//! password and robot-secret hashing, and the permission rules that decide who may do what.
//!
//! Uses `berth-oci` for patterns and `berth-storage` for the tables; knows nothing of HTTP.
#![warn(missing_docs)]

pub mod authorizer;
pub mod header;
pub mod password;
pub mod scope;
pub mod token;

pub use authorizer::{Authorizer, Principal};
pub use scope::{Access, Action, Scope};
pub use token::{Claims, KeySet, TokenError};
