//! sitesync: offline-first replication of clinic medical records.
//!
//! Each site runs a node that stores every record as an Automerge document in redb, seals its
//! own changes into signed batches, and exchanges them with other nodes (over QUIC, or as bundle
//! files) so that every node holding the same changes holds identical records.
//!
//! # Layout
//!
//! Dependencies point downward only (the layer table of `docs/architecture.md`, which
//! `tests/layers.rs` enforces):
//!
//! - edge: [`cli`] (arguments parsed into [`node::Request`]s, replies printed for people, exit
//!   codes), `main.rs`, [`demo`]
//! - compose: [`node`] (a node directory: key, config, store; trust and rosters; what a node
//!   can be asked, [`node::Node::execute`], and its [`node::NodeHandle`]; the control
//!   endpoint; [`node::session_host`], one session's effects for `serve` and the simulator;
//!   [`node::serve`], the running node; the node's clock and entropy, [`node::env`])
//! - async I/O: [`web`] (the admin web view and JSON API, over the [`web::data::AdminData`]
//!   trait the node implements), [`transport`] (QUIC endpoints, raw-key TLS pinned both ways,
//!   frame reading)
//! - blocking: [`store`] (redb tables, local writes and sealing, durable receipt, merging dirty
//!   documents), [`bundle`] (the bundle file format)
//! - pure core: [`protocol`] (messages, frame codec, the sans-IO session), [`batch`] (sealing and
//!   verifying signed batches), [`entity`] (validation, canonical form, Automerge mapping),
//!   [`conflict`] (conflicts and their policies), [`fhir`] (the FHIR R4 mapping and its
//!   inverse, exports, the push protocol), [`emr`] (the EMR bridge's config and its field-by-field
//!   comparison), [`config`] (validated `sitesync.toml`), [`event`] (audit log entries),
//!   [`identity`] (ed25519), [`id`] (identifier newtypes)
//!
//! See `docs/architecture.md` for the data flow.

pub mod batch;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod demo;
pub mod emr;
pub mod entity;
pub mod event;
pub mod fhir;
pub mod id;
pub mod identity;
pub mod node;
pub mod protocol;
pub mod store;
pub mod transport;
pub mod web;

/// Environment variable naming a [`failpoint`] at which the process aborts (crash tests).
pub const FAILPOINT_ENV: &str = "SITESYNC_FAILPOINT";

/// Crash-test hook: ends the process here at once, when `SITESYNC_FAILPOINT` names this point
/// (exit status 137, as after `kill -9`; no destructor runs, so nothing is flushed or closed
/// cleanly, and no core file is left as `abort` could). Placed only between transactions that
/// a crash may separate, so tests can prove a node restarts consistent from exactly there.
pub fn failpoint(name: &str) {
    if std::env::var_os(FAILPOINT_ENV).is_some_and(|v| v == name) {
        std::process::exit(137);
    }
}

/// The value of the environment variable `name` parsed as a `T`, if it is set and parses
/// (tuning and test overrides of named limits).
pub(crate) fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.parse().ok()
}
