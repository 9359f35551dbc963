//! What FHIR exports and pushes read and keep in the store: the records changed since a
//! cursor (from the batches beyond a vector), and per push target its state (`fhir-push-1`)
//! and the versions it acknowledged (`fhir-push-sent-1`). Layouts in `tables.rs`.
//!
//! Nothing here maps or sends: `fhir/` maps, `node/push.rs` sends.

use std::collections::{BTreeSet, HashMap, HashSet};

use redb::{ReadableDatabase, ReadableTable};

use super::tables::{BATCHES, DIRTY, FHIR_PUSH, FHIR_PUSH_SENT, VECTOR};
use super::{Store, StoreError, append_event, corrupt, decode_batch, read_vector};
use crate::event::Event;
use crate::fhir::PushState;
use crate::id::{BodyHash, EntityId, Vector};

/// Version byte of the values of both tables.
const VALUE_VERSION: u8 = 1;

/// The records changed since a cursor, and the cursor that covers them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FhirChanges {
    /// Every record named by a batch beyond the cursor, and every record with received changes
    /// not merged yet.
    pub entities: BTreeSet<EntityId>,
    /// The held vector, lowered for each author to before its first batch whose change is not
    /// merged into its document yet, so that change is looked at again next time.
    pub cursor: Vector,
}

impl Store {
    /// The records changed since `since` (see [`FhirChanges`]). Refuses a cursor ahead of this
    /// store (made by another node, or before this store was restored from a backup).
    pub fn fhir_changes(&self, since: &Vector) -> Result<FhirChanges, StoreError> {
        let tx = self.db.begin_read()?;
        let held = read_vector(&tx.open_table(VECTOR)?)?;
        for (author, &seq) in &since.0 {
            let have = held.get(author);
            if seq > have {
                return Err(StoreError::Invalid(format!(
                    "the cursor is ahead of this store for author {author} (batch {seq}, this \
                     store holds {have}): it was made by another node or before a restore; \
                     start again without --since"
                )));
            }
        }
        let mut entities = BTreeSet::new();
        let mut dirty: HashSet<BodyHash> = HashSet::new();
        match tx.open_table(DIRTY) {
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
            Ok(table) => {
                for item in table.iter()? {
                    let (k, v) = item?;
                    let key = k.value();
                    let id: EntityId =
                        key.parse().map_err(|e| corrupt(format!("dirty key {key:?}"), e))?;
                    entities.insert(id);
                    let bodies: Vec<BodyHash> = postcard::from_bytes(v.value())
                        .map_err(|e| corrupt(format!("dirty {key}"), e))?;
                    dirty.extend(bodies);
                }
            }
        }
        let batches = tx.open_table(BATCHES)?;
        let mut cursor = held.clone();
        for (author, &top) in &held.0 {
            let from = since.get(author) + 1;
            if from > top {
                continue;
            }
            let actor = author.actor_bytes();
            let mut upto = top;
            for item in batches.range((&actor, from)..=(&actor, top))? {
                let (k, v) = item?;
                let seq = k.value().1;
                let (_, signed) = decode_batch(v.value())?;
                for change in &signed.batch.changes {
                    entities.insert(change.entity);
                    if dirty.contains(&change.body) {
                        upto = upto.min(seq - 1);
                    }
                }
            }
            cursor.0.insert(*author, upto);
        }
        Ok(FhirChanges { entities, cursor })
    }

    /// The state of push target `name` (`None`: never pushed).
    pub fn push_state(&self, name: &str) -> Result<Option<PushState>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(FHIR_PUSH) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            other => other?,
        };
        table.get(name)?.map(|v| decode_state(name, v.value())).transpose()
    }

    /// Read-modify-writes the state of push target `name`, and appends `event` to the audit
    /// log in the same transaction.
    pub fn update_push_state(
        &self,
        name: &str,
        event: Option<Event>,
        f: impl FnOnce(&mut PushState),
    ) -> Result<PushState, StoreError> {
        let tx = self.db.begin_write()?;
        let state = {
            let mut table = tx.open_table(FHIR_PUSH)?;
            let mut state = match table.get(name)? {
                Some(v) => decode_state(name, v.value())?,
                None => PushState::default(),
            };
            f(&mut state);
            let mut bytes = vec![VALUE_VERSION];
            bytes.extend(serde_json::to_vec(&state).map_err(|e| corrupt("push state", e))?);
            table.insert(name, bytes.as_slice())?;
            state
        };
        if let Some(event) = event {
            append_event(&tx, event)?;
        }
        tx.commit()?;
        Ok(state)
    }

    /// The acknowledged version hashes of `keys` (`Type/id`) at target `name`.
    pub fn push_delivered(
        &self,
        name: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, [u8; 32]>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(FHIR_PUSH_SENT) {
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(HashMap::new()),
            other => other?,
        };
        let mut out = HashMap::new();
        for key in keys {
            if let Some(v) = table.get((name, *key))? {
                let bytes = v.value();
                let hash: [u8; 32] = match bytes.split_first() {
                    Some((&VALUE_VERSION, rest)) => rest.try_into().ok(),
                    _ => None,
                }
                .ok_or_else(|| corrupt(format!("push record {name} {key}"), "bad value"))?;
                out.insert(key.to_string(), hash);
            }
        }
        Ok(out)
    }

    /// Records that target `name` acknowledged these versions (one transaction).
    pub fn push_acked(&self, name: &str, items: &[(&str, [u8; 32])]) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(FHIR_PUSH_SENT)?;
            for (key, hash) in items {
                let mut bytes = vec![VALUE_VERSION];
                bytes.extend_from_slice(hash);
                table.insert((name, *key), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets every version target `name` acknowledged (its base URL changed: another server).
    pub fn push_forget(&self, name: &str) -> Result<u64, StoreError> {
        let tx = self.db.begin_write()?;
        let mut removed = 0;
        {
            let mut table = tx.open_table(FHIR_PUSH_SENT)?;
            let mut keys: Vec<String> = Vec::new();
            for item in table.range((name, "")..)? {
                let (k, _) = item?;
                let (n, key) = k.value();
                if n != name {
                    break;
                }
                keys.push(key.to_string());
            }
            for key in keys {
                table.remove((name, key.as_str()))?;
                removed += 1;
            }
        }
        tx.commit()?;
        Ok(removed)
    }
}

fn decode_state(name: &str, bytes: &[u8]) -> Result<PushState, StoreError> {
    match bytes.split_first() {
        Some((&VALUE_VERSION, json)) => {
            serde_json::from_slice(json).map_err(|e| corrupt(format!("push state {name}"), e))
        }
        Some((v, _)) => Err(corrupt(format!("push state {name}"), format!("version {v}"))),
        None => Err(corrupt(format!("push state {name}"), "empty")),
    }
}
