//! The `lobster` binary's pieces: configuration, the server, and operator commands.

pub mod admin;
pub mod config;
pub mod serve;
