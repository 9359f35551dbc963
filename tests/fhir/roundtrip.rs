//! The inverse mapping (`src/fhir/unmap.rs`) against the export, on the examples and the
//! ~230 generated records: what the EMR bridge relies on to read nothing back from its own
//! writes and to change only what an EMR changed.
//!
//! - EMR -> record -> EMR is a fixed point: a resource read as a record (into an empty record,
//!   as a resource the EMR created arrives) maps to a resource that reads back the same.
//! - record -> EMR -> record changes nothing: the record read back from its own resource, laid
//!   over the record, gives no edit, and a record built from it alone validates.
//! - An edit in the EMR becomes exactly that edit of the record, and an item gone from the EMR
//!   is voided, never deleted.

use serde_json::{Map, Value, json};

use sitesync::emr::diff::{self, Edit};
use sitesync::entity;
use sitesync::fhir::{ConceptCodes, Context, Mapper, Unmapped, Unmapper};
use sitesync::id::{EntityId, EntityType, Uid};

use crate::generator::generated;
use crate::{Rec, examples, settings, site, source_of, today};

/// Maps records with the fixtures' settings, site, date and records as the source.
fn with_mapper<T>(records: &[Rec], f: impl FnOnce(&Mapper, &Unmapper) -> T) -> T {
    let source = source_of(records);
    let (settings, site) = (settings(), site());
    let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
    let mut mapper = Mapper::new(ctx);
    for (ty, uuid, value) in records {
        mapper.index(*ty, *uuid, value);
    }
    let concepts = records
        .iter()
        .filter(|(ty, _, _)| *ty == EntityType::Concept)
        .map(|(_, uuid, v)| (*uuid, v));
    let codes = ConceptCodes::build(&settings, concepts);
    let unmapper = Unmapper { settings: &settings, source: &source, codes: &codes, today: today() };
    f(&mapper, &unmapper)
}

fn resource(mapper: &Mapper, (ty, uuid, value): &Rec) -> Option<Value> {
    let mapped = mapper.map(*ty, *uuid, value).ok().flatten()?;
    Some(mapped.resource.to_json())
}

fn read_back(unmapper: &Unmapper, (ty, uuid, _): &Rec, resource: &Value) -> Unmapped {
    let back = unmapper
        .unmap(resource)
        .unwrap_or_else(|e| panic!("{ty}/{uuid}: its own resource does not read back: {e}"))
        .unwrap_or_else(|| panic!("{ty}/{uuid}: read as no record"));
    assert_eq!(back.entity, EntityId::new(*ty, *uuid), "read back as another record");
    back
}

/// Maps every exported record and reads it back.
fn round_trip(records: &[Rec]) -> Vec<(Rec, Value, Unmapped)> {
    with_mapper(records, |mapper, unmapper| {
        let mut out = Vec::new();
        for rec in records {
            let Some(resource) = resource(mapper, rec) else { continue };
            let back = read_back(unmapper, rec, &resource);
            out.push((rec.clone(), resource, back));
        }
        out
    })
}

fn all_records() -> Vec<Rec> {
    let mut records = examples();
    records.extend(generated());
    records
}

/// A record built from what a resource says, as a record the EMR created arrives.
fn from_emr(ty: EntityType, back: &Unmapped) -> Map<String, Value> {
    let emr = diff::flatten(ty, &back.fields, &back.unsaid);
    let edits = diff::emr_edits(ty, None, None, &emr, &diff::Flat::new());
    let mut record = Map::new();
    diff::apply(&mut record, &edits);
    for (k, v) in &back.defaults {
        record.entry(k.clone()).or_insert_with(|| v.clone());
    }
    record
}

#[test]
fn a_record_read_back_from_its_own_resource_changes_nothing() {
    let records = all_records();
    let failures = with_mapper(&records, |mapper, unmapper| {
        let mut failures = Vec::new();
        let mut exported = 0;
        for rec @ (ty, uuid, value) in &records {
            let Some(first) = resource(mapper, rec) else { continue };
            exported += 1;
            let back = read_back(unmapper, rec, &first);
            let held = diff::flatten(*ty, &back.fields, &back.unsaid);
            // The EMR holds what was written and the base is unknown (a crash lost it): no edit.
            assert_eq!(diff::emr_edits(*ty, None, None, &held, &held), vec![], "{ty}/{uuid}");
            // Even laid over the record field by field, the read-back changes nothing the EMR
            // sees: the record maps to the same resource.
            let mut record = value.as_object().expect("object").clone();
            let edits = diff::emr_edits(*ty, None, None, &held, &diff::Flat::new());
            diff::apply(&mut record, &edits);
            let again = resource(mapper, &(*ty, *uuid, Value::Object(record)));
            if again.as_ref() != Some(&first) {
                failures.push(format!(
                    "{ty}/{uuid}:\n--- first\n{first:#}\n--- after its read-back\n{:#}",
                    again.unwrap_or_default()
                ));
            }
        }
        assert!(exported > 150, "most records export: {exported}");
        failures
    });
    assert!(failures.is_empty(), "{} records moved:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn a_resource_read_as_a_new_record_maps_back_to_the_same_fields() {
    let records = all_records();
    let trips = round_trip(&records);
    // Each resource as the EMR's own: a record built from it alone, mapped again, reads back
    // the same (EMR -> record -> EMR is a fixed point).
    let mut rebuilt: Vec<Rec> = trips
        .iter()
        .map(|((ty, uuid, _), _, back)| (*ty, *uuid, Value::Object(from_emr(*ty, back))))
        .chain(records.iter().filter(|(ty, _, _)| *ty == EntityType::Concept).cloned())
        .collect();
    // An obs group names its members; each member names its group.
    for (_, _, back) in &trips {
        for member in &back.members {
            if let Some((_, _, m)) =
                rebuilt.iter_mut().find(|(ty, uuid, _)| *ty == EntityType::Obs && uuid == member)
            {
                m["obsGroup"] = json!(back.entity.uuid.to_string());
            }
        }
    }
    for (ty, uuid, value) in &rebuilt {
        if *ty == EntityType::Concept {
            continue;
        }
        let output = entity::to_output(*ty, value.as_object().expect("object"));
        let mut input = output.clone();
        input["uuid"] = json!(uuid.to_string());
        if let Err(e) = entity::validate(*ty, &input, Uid::from_random([1; 16])) {
            panic!("{ty}/{uuid}: a record built from its resource alone does not validate: {e}");
        }
    }
    let again = round_trip(&rebuilt);
    let missing: Vec<String> = trips
        .iter()
        .filter(|(_, _, b)| !again.iter().any(|(_, _, a)| a.entity == b.entity))
        .map(|(_, _, b)| b.entity.to_string())
        .collect();
    assert_eq!(missing, Vec::<String>::new(), "every rebuilt record exports");
    for ((_, _, first), (_, _, second)) in trips.iter().zip(&again) {
        assert_eq!(first.entity, second.entity);
        assert_eq!(first.fields, second.fields, "{}: EMR -> record -> EMR moved", first.entity);
    }
}

#[test]
fn an_edit_in_the_emr_is_that_edit_of_the_record_and_a_removed_name_is_voided() {
    let records = examples();
    let trips = round_trip(&records);
    let ((ty, _, value), resource, back) = trips
        .iter()
        .find(|((ty, _, _), _, _)| *ty == EntityType::Patient)
        .expect("the example patient");
    let base = diff::flatten(*ty, &back.fields, &back.unsaid);
    // A clinician edits the family name and marks the patient inactive in the EMR.
    let mut edited = resource.clone();
    edited["name"][0]["family"] = json!("Otieno");
    edited["active"] = json!(false);
    let settings = settings();
    let source = source_of(&records);
    let codes = ConceptCodes::default();
    let unmapper = Unmapper { settings: &settings, source: &source, codes: &codes, today: today() };
    let read = unmapper.unmap(&edited).expect("reads").expect("a record");
    let emr = diff::flatten(*ty, &read.fields, &read.unsaid);
    let edits = diff::emr_edits(*ty, Some(&base), None, &emr, &base);
    let name = edited["name"][0]["id"].as_str().expect("name id");
    assert_eq!(
        edits,
        vec![
            Edit::Set(format!("names.{name}.familyName"), json!("Otieno")),
            Edit::Set("voided".into(), json!(true)),
        ]
    );
    let mut record = value.as_object().expect("object").clone();
    diff::apply(&mut record, &edits);
    assert_eq!(record["names"][name]["familyName"], json!("Otieno"));
    assert_eq!(record["names"][name]["givenName"], value["names"][name]["givenName"]);
    assert_eq!(record["voided"], json!(true));
    // The name is removed in the EMR: the record keeps it, voided.
    let mut removed = resource.clone();
    removed["name"] = json!([]);
    let read = unmapper.unmap(&removed).expect("reads").expect("a record");
    let emr = diff::flatten(*ty, &read.fields, &read.unsaid);
    let edits = diff::emr_edits(*ty, Some(&base), None, &emr, &base);
    assert_eq!(edits, vec![Edit::VoidItem(format!("names.{name}"))]);
    let mut record = value.as_object().expect("object").clone();
    diff::apply(&mut record, &edits);
    assert_eq!(record["names"][name]["voided"], json!(true));
    assert_eq!(record["names"][name]["familyName"], value["names"][name]["familyName"]);
}
