//! The EMR bridge's state (`docs/emr.md`): per EMR and FHIR type, where reading stands; per
//! EMR and record, the last state the EMR and this node agreed on (and a write in flight); per
//! EMR, the write side's position and counters.
//!
//! A read commits its records, their agreed states and the cursor in **one** transaction
//! ([`Store::emr_commit_read`]): a crash neither loses a change the EMR made (the cursor did
//! not move past it) nor doubles one (reading it again finds the record already says it).

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::local::PutOutcome;
use super::tables::{EMR_BASE, EMR_CURSOR, EMR_STATE};
use super::{Store, StoreError, corrupt, encode};
use crate::entity::Record;
use crate::id::{EntityId, Vector};
use crate::identity::Keypair;

/// Where reading one FHIR resource type of one EMR stands.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrCursor {
    /// The greatest `meta.lastUpdated` read so far, as the server wrote it (its clock, never
    /// this node's).
    pub last_updated: Option<String>,
}

/// The last state of one record the EMR and this node agreed on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrBase {
    /// `meta.versionId` of the resource version it was read from or written as.
    pub version: Option<String>,
    /// `meta.lastUpdated` of that version.
    pub last_updated: Option<String>,
    /// The projection both agreed on (`emr::diff::Flat` as JSON).
    pub fields: String,
    /// The projection being written into the EMR now, until its answer (`None`: no write in
    /// flight). A read that finds it is reading the bridge's own write.
    pub pending: Option<String>,
    /// The EMR deleted the resource (the record is voided here): never written again, unless
    /// the EMR holds it once more.
    pub gone: bool,
}

/// Position and counters of one EMR link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmrState {
    /// The write side has considered every change up to here.
    pub out: Vector,
    pub last_run: i64,
    pub last_success: i64,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// Records changed in this node by reads, and resources written into the EMR, in total.
    pub records_in: u64,
    pub records_out: u64,
    /// Resources read that changed nothing (already agreed, or the bridge's own writes).
    pub unchanged: u64,
    pub last_reconcile: i64,
    /// Per FHIR type: records in, records out, failures of the last run.
    pub types: BTreeMap<String, TypeCounts>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeCounts {
    pub records_in: u64,
    pub records_out: u64,
    pub failed: u64,
    pub last_read: i64,
}

/// Where one page of an EMR read leaves the bridge: the agreed states and the cursor, made
/// durable with the page's records.
#[derive(Clone, Copy)]
pub struct EmrRead<'a> {
    pub emr: &'a str,
    pub fhir_type: &'a str,
    pub cursor: &'a EmrCursor,
    pub bases: &'a [(EntityId, EmrBase)],
}

fn key_of(emr: &str, entity: &EntityId) -> String {
    format!("{emr}\u{0}{}", entity.key())
}

impl Store {
    /// Where reading `fhir_type` from `emr` stands.
    pub fn emr_cursor(&self, emr: &str, fhir_type: &str) -> Result<EmrCursor, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(EMR_CURSOR) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(EmrCursor::default()),
            other => other?,
        };
        match table.get((emr, fhir_type))? {
            None => Ok(EmrCursor::default()),
            Some(v) => postcard::from_bytes(v.value())
                .map_err(|e| corrupt(format!("emr cursor {emr}/{fhir_type}"), e)),
        }
    }

    /// The agreed states of these records with `emr`.
    pub fn emr_bases(
        &self,
        emr: &str,
        entities: &[EntityId],
    ) -> Result<BTreeMap<EntityId, EmrBase>, StoreError> {
        let tx = self.db.begin_read()?;
        let mut out = BTreeMap::new();
        let table = match tx.open_table(EMR_BASE) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
            other => other?,
        };
        for e in entities {
            let k = key_of(emr, e);
            if let Some(v) = table.get(k.as_str())? {
                let base: EmrBase = postcard::from_bytes(v.value())
                    .map_err(|err| corrupt(format!("emr base {k}"), err))?;
                out.insert(*e, base);
            }
        }
        Ok(out)
    }

    /// Every record `emr` and this node have agreed on (for the sweep that finds deletes).
    pub fn emr_known(&self, emr: &str) -> Result<Vec<EntityId>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(EMR_BASE) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            other => other?,
        };
        let (lo, hi) = (format!("{emr}\u{0}"), format!("{emr}\u{1}"));
        let mut out = Vec::new();
        for item in table.range(lo.as_str()..hi.as_str())? {
            let (k, _) = item?;
            let key = k.value();
            let id =
                key[lo.len()..].parse().map_err(|e| corrupt(format!("emr base key {key:?}"), e))?;
            out.push(id);
        }
        Ok(out)
    }

    /// One read of the EMR made durable at once: its records as local changes (sealed like
    /// any write), their agreed states, and the cursor.
    pub fn emr_commit_read(
        &self,
        key: &Keypair,
        records: &[Record],
        time: i64,
        read: &EmrRead,
    ) -> Result<Vec<PutOutcome>, StoreError> {
        let EmrRead { emr, fhir_type, cursor, bases } = *read;
        let tx = self.db.begin_write()?;
        let outcomes =
            if records.is_empty() { Vec::new() } else { self.put_in(&tx, key, records, time)? };
        {
            let mut table = tx.open_table(EMR_BASE)?;
            for (e, base) in bases {
                table.insert(key_of(emr, e).as_str(), encode(base).as_slice())?;
            }
            let mut cursors = tx.open_table(EMR_CURSOR)?;
            cursors.insert((emr, fhir_type), encode(cursor).as_slice())?;
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// Sets (or, with `None`, forgets) agreed states, e.g. a write in flight and its answer.
    pub fn emr_set_bases(
        &self,
        emr: &str,
        bases: &[(EntityId, Option<EmrBase>)],
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(EMR_BASE)?;
            for (e, base) in bases {
                let k = key_of(emr, e);
                match base {
                    Some(b) => {
                        table.insert(k.as_str(), encode(b).as_slice())?;
                    }
                    None => {
                        table.remove(k.as_str())?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn emr_state(&self, emr: &str) -> Result<EmrState, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(EMR_STATE) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(EmrState::default()),
            other => other?,
        };
        match table.get(emr)? {
            None => Ok(EmrState::default()),
            Some(v) => {
                postcard::from_bytes(v.value()).map_err(|e| corrupt(format!("emr state {emr}"), e))
            }
        }
    }

    /// Changes `emr`'s state in one transaction (with the run's audit entry, if any) and
    /// returns it.
    pub fn update_emr_state(
        &self,
        emr: &str,
        event: Option<crate::event::Event>,
        f: impl FnOnce(&mut EmrState),
    ) -> Result<EmrState, StoreError> {
        let tx = self.db.begin_write()?;
        if let Some(event) = event {
            super::append_event(&tx, event)?;
        }
        let state = {
            let mut table = tx.open_table(EMR_STATE)?;
            let mut state: EmrState = match table.get(emr)? {
                None => EmrState::default(),
                Some(v) => postcard::from_bytes(v.value())
                    .map_err(|e| corrupt(format!("emr state {emr}"), e))?,
            };
            f(&mut state);
            table.insert(emr, encode(&state).as_slice())?;
            state
        };
        tx.commit()?;
        Ok(state)
    }
}
