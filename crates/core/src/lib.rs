//! Pure domain types for Lobster: ids, validated newtypes, the instance state machine,
//! capacity, the fleet model, roles and the one error enum. No IO lives here.

pub mod auth;
pub mod billing;
pub mod capacity;
pub mod clock;
pub mod error;
pub mod firewall;
pub mod fleet;
pub mod ids;
pub mod instance;
pub mod ip;
pub mod schedule;
pub mod task;
pub mod validate;

pub use error::{Error, FieldError, Loc};
