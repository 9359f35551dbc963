//! Writing into an EMR what it does not hold as this node does: read before write, the
//! overlay that keeps the EMR's own elements, `If-Match`, retries (docs/emr.md, "Writing").

use std::collections::BTreeSet;

use serde_json::Value;

use super::{
    EMR_CONFLICT_RETRIES_MAX, EmrHttp, EmrReport, Stop, agreed_on, outcome_text, rank, stop,
};
use crate::emr::diff::{self, Flat};
use crate::emr::search;
use crate::emr::{EmrLink, Profile, overlay};
use crate::fhir::{ConceptCodes, Mapper, Unmapper};
use crate::id::{EntityId, EntityType};
use crate::node::Node;
use crate::store::emr::EmrBase;

impl Node {
    // ---------------------------------------------------------------- writing ---

    /// Writes into the EMR every record changed since the write side's position whose
    /// projection moved from what the EMR and this node last agreed on.
    pub(super) fn emr_write(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        codes: &ConceptCodes,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let state = self.store.emr_state(&link.name).map_err(stop)?;
        let changes = self.store.fhir_changes(&state.out).map_err(stop)?;
        let mut wanted: BTreeSet<EntityId> =
            changes.entities.iter().filter(|e| link.types.contains(&e.ty)).copied().collect();
        // Records that failed before go again (a referenced record may be there now).
        for key in self.emr_standing_failures(link)? {
            let (ty, id) = key.split_once('/').unwrap_or_default();
            let Ok(uuid) = crate::id::parse_uuid(id) else { continue };
            for t in
                link.types.iter().filter(|t| crate::fhir::map::resource_type_of(**t) == Some(ty))
            {
                let e = EntityId::new(*t, uuid);
                if self.store.get(&e).map_err(stop)?.is_some() {
                    wanted.insert(e);
                }
            }
        }
        let mut todo: Vec<EntityId> = wanted.into_iter().collect();
        todo.sort_by_key(|e| (rank(e.ty), *e));
        self.with_mapping(codes, |mapper, unmapper| {
            for id in todo.iter().filter(|e| e.ty == EntityType::Obs) {
                if let Ok(Some((v, _))) = self.store.get(id) {
                    mapper.index(id.ty, id.uuid, &v);
                }
            }
            for id in &todo {
                self.emr_write_one(link, http, mapper, unmapper, id, report)?;
            }
            Ok(())
        })?;
        self.store
            .update_emr_state(&link.name, None, |s| s.out = changes.cursor.clone())
            .map_err(stop)?;
        Ok(())
    }

    fn emr_write_one(
        &self,
        link: &EmrLink,
        http: &mut dyn EmrHttp,
        mapper: &Mapper,
        unmapper: &Unmapper,
        id: &EntityId,
        report: &mut EmrReport,
    ) -> Result<(), Stop> {
        let Some(record) = self.stored_record(id).map_err(stop)? else { return Ok(()) };
        let mapped = match mapper.map(id.ty, id.uuid, &Value::Object(record.clone())) {
            Ok(Some(m)) => m.resource.to_json(),
            Ok(None) => return Ok(()),
            Err(e) => {
                let key = format!(
                    "{}/{}",
                    crate::fhir::map::resource_type_of(id.ty).unwrap_or("?"),
                    id.uuid
                );
                self.emr_fail(link, report, &key, "write", None, e.to_string());
                return Ok(());
            }
        };
        let fhir_type = mapped["resourceType"].as_str().unwrap_or_default().to_string();
        let key = format!("{fhir_type}/{}", id.uuid);
        let held = self.projection(mapper, unmapper, id, &record);
        let base = self.store.emr_bases(&link.name, &[*id]).map_err(stop)?.remove(id);
        if base.as_ref().is_some_and(|b| b.gone) {
            // Deleted in the EMR: its voiding here is not written back.
            return Ok(());
        }
        let base_flat = base.as_ref().and_then(|b| serde_json::from_str::<Flat>(&b.fields).ok());
        if base_flat.as_ref() == Some(&held) {
            // What the EMR last agreed to: nothing to write (an echo of a read, or done).
            return Ok(());
        }
        let url = format!("{}/{key}", link.base_url);
        for _ in 0..=EMR_CONFLICT_RETRIES_MAX {
            let current = self.emr_request(http, report, |h| h.get(&url))?;
            let current = match current.status {
                200 => serde_json::from_str::<Value>(&current.body).ok(),
                404 | 410 if base.is_some() => {
                    // Deleted in the EMR since: the read side voids the record; not re-created.
                    return Ok(());
                }
                404 | 410 => None,
                s => {
                    let why =
                        format!("reading it before the write: {}", outcome_text(&current.body));
                    self.emr_fail(link, report, &key, "write", Some(s), why);
                    return Ok(());
                }
            };
            if current.is_none() && !link.profile.creates() {
                let why = "the EMR does not hold it, and OpenMRS FHIR2 cannot create a record under \
                           its uuid (profile openmrs-fhir2: updates only)";
                self.emr_fail(link, report, &key, "write", Some(404), why.into());
                return Ok(());
            }
            let read_back = current.as_ref().and_then(|c| unmapper.unmap(c).ok().flatten());
            let skipped = read_back.as_ref().map(|u| u.skipped.clone()).unwrap_or_default();
            let emr_now = read_back.as_ref().map(|u| diff::flatten(id.ty, &u.fields, &u.unsaid));
            if emr_now.as_ref() == Some(&held) {
                report.agreed += 1;
                let agreed = agreed_on(current.as_ref(), &held);
                self.store.emr_set_bases(&link.name, &[(*id, Some(agreed))]).map_err(stop)?;
                return Ok(());
            }
            if let (Some(now), Some(b)) = (&emr_now, &base_flat)
                && now != b
            {
                // The EMR changed the record since the last agreement and the read has not
                // taken it in yet: the next read does; writing now would overwrite it.
                return Ok(());
            }
            let body = overlay::overlay(current.as_ref(), &mapped, &skipped);
            let pending = EmrBase {
                pending: Some(serde_json::to_string(&held).unwrap_or_default()),
                ..base.clone().unwrap_or_default()
            };
            self.store.emr_set_bases(&link.name, &[(*id, Some(pending))]).map_err(stop)?;
            let if_match = match (link.profile, &current) {
                (Profile::Fhir, Some(c)) => search::version_id(c).map(|v| format!("W/\"{v}\"")),
                _ => None,
            };
            let bytes = body.to_string().into_bytes();
            let reply =
                self.emr_request(http, report, |h| h.put(&url, &bytes, if_match.as_deref()))?;
            match reply.status {
                200 | 201 => {
                    // Crash tests: the EMR holds the write, this node has not noted it.
                    crate::failpoint("emr-after-write");
                    let stored = serde_json::from_str::<Value>(&reply.body).ok();
                    let agreed = agreed_on(stored.as_ref(), &held);
                    self.store.emr_set_bases(&link.name, &[(*id, Some(agreed))]).map_err(stop)?;
                    report.written += 1;
                    report.created += u64::from(reply.status == 201);
                    report.per_type.entry(fhir_type.clone()).or_default().1 += 1;
                    self.emr_clear_failure(link, &key);
                    return Ok(());
                }
                412 => continue,
                s => {
                    self.store.emr_set_bases(&link.name, &[(*id, base.clone())]).map_err(stop)?;
                    self.emr_fail(link, report, &key, "write", Some(s), outcome_text(&reply.body));
                    return Ok(());
                }
            }
        }
        let why = format!(
            "the EMR changed it {} times while it was being written",
            EMR_CONFLICT_RETRIES_MAX + 1
        );
        self.emr_fail(link, report, &key, "write", Some(412), why);
        Ok(())
    }
}
