//! sitesync: offline-first replication of clinic medical records.
//!
//! Each site runs a node that stores every record as an Automerge document in redb, seals its
//! own changes into signed batches, and exchanges them with other nodes (bundle files now, QUIC
//! later) so that every node holding the same changes holds identical records.
//!
//! # Layout
//!
//! Dependencies point downward only:
//!
//! - edge: [`cli`] (commands and exit codes), `main.rs`, [`demo`]
//! - compose: [`node`]: a node directory (key, config, store); the only place that reads the
//!   clock, the OS RNG and node files
//! - blocking: [`store`] (redb tables, local writes and sealing, the apply transaction,
//!   parallel materializing), [`bundle`] (the bundle file format)
//! - pure core: [`batch`] (sealing and verifying signed batches), [`entity`] (validation,
//!   canonical form, Automerge mapping, conflicts), [`config`] (validated `sitesync.toml`),
//!   [`event`] (the event log's entries), [`identity`] (ed25519), [`id`] (identifier newtypes)
//!
//! See `docs/architecture.md` for the data flow.

pub mod batch;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod demo;
pub mod entity;
pub mod event;
pub mod id;
pub mod identity;
pub mod node;
pub mod protocol;
pub mod store;
pub mod transport;
