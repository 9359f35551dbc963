//! The bridge between a node and the FHIR R4 API of the EMR beside it (`docs/emr.md`): the
//! clinic's changes flow into the node, and what other sites send flows into the EMR, with no
//! one running a command.
//!
//! Pure parts only; the HTTP client, the store tables and the schedule are the node's
//! (`node/emr.rs`, `store/emr.rs`).
//!
//! - [`config`]: the `[[emr]]` tables of `sitesync.toml` ([`EmrLink`]).
//! - [`diff`]: which side changed a record, field by field, against the last state both agreed
//!   on; what the EMR changed becomes edits of the record, and an echo becomes nothing.
//! - [`overlay`]: a mapped record laid over the resource the EMR holds, keeping what the EMR
//!   holds and sitesync does not map.
//! - [`search`]: the keyset reading of an EMR's changes by `_lastUpdated`, server instants.

pub mod config;
pub mod diff;
pub mod overlay;
pub mod search;

pub use config::{Direction, EmrConfig, EmrLink, Profile};
pub use diff::{Edit, Flat};
