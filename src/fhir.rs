//! FHIR R4 export: records -> FHIR resources, following OpenMRS's FHIR2 module
//! (`docs/fhir-mapping.md` lists every field, every deviation and why).
//!
//! - [`model`]: typed resources and datatypes (only what sitesync emits; empty elements are
//!   never serialized).
//! - [`settings`]: [`FhirSettings`], the export settings of the `[fhir]` table of `sitesync.toml`.
//! - [`map`]: one record -> one resource ([`Mapper`]), pure: referenced records (concepts,
//!   persons) come from a [`RecordSource`].
//! - [`mod@export`]: many records -> NDJSON files per resource type, or a transaction Bundle, with
//!   an [`FhirExportReport`] (counts, skipped records and why, warnings).
//! - [`cursor`]: [`Cursor`], the text form of "the records changed since" for incremental
//!   exports and pushes.
//! - [`target`]: [`FhirConfig`], the `[fhir]` table of `sitesync.toml` with its push targets.
//! - [`push`]: transaction Bundles to a FHIR server: ordering, retries, refusals (sans-IO; the
//!   HTTP client and the store glue are in `node/push.rs`).
//! - [`unmap`]: the inverse of [`map`]: one resource -> the record fields it expresses, for
//!   the EMR bridge's read side ([`Unmapper`]).
//!
//! `concept`, `generic` and `roster` records have no resource: concepts become codings inside
//! the resources that use them; generic and roster records are not clinical data.
//!
//! Errors and warnings name records by type and uuid and fields by path, never by value, so a
//! report can be logged without patient data.

pub mod cursor;
pub mod export;
pub mod map;
pub mod model;
pub mod push;
mod read;
pub mod settings;
pub mod target;
pub mod time;
pub mod unmap;

use serde::{Deserialize, Serialize};

use crate::id::EntityId;

pub use cursor::{Cursor, CursorError};
pub use export::{
    Export, ExportError, FhirExportReport, export, export_indexed, write_bundle, write_ndjson,
};
pub use map::{Context, Mapped, Mapper, RecordSource, Site};
pub use push::{PushReport, PushState, PushTargetStatus};
pub use settings::{FhirSettings, SettingsError};
pub use target::{FhirConfig, PushTarget};
pub use time::Date;
pub use unmap::{ConceptCodes, Skipped, UnmapError, Unmapped, Unmapper, WaitsFor};

/// A record that cannot be expressed as a valid FHIR resource: which record, which field, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{entity}: field {field}: {reason}")]
pub struct MapError {
    pub entity: EntityId,
    pub field: String,
    pub reason: String,
}

/// Something left out of a resource that was still written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub entity: EntityId,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: field {}: {}", self.entity, self.field, self.message)
    }
}
