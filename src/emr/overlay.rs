//! Writing a record into an EMR without losing what the EMR holds and sitesync does not map
//! (`docs/emr.md`, "Writing"): the resource the EMR holds now, with the elements the mapping
//! owns replaced by the mapped record's, and everything else kept (elements sitesync does not
//! map, extensions of other URLs, tags of other systems, and the items of owned lists that the
//! record cannot hold, such as an identifier of a system it has no type for).

use serde_json::{Map, Value};

use crate::fhir::Skipped;
use crate::fhir::map::{
    EXT_ENCOUNTER_TAG, EXT_LOCATION_TAG, EXT_NON_CODED_CONDITION, EXT_PERSON_ATTRIBUTE,
};

/// The top-level elements the mapping owns, per resource type (every element the export may
/// write, set or absent).
fn owned(resource_type: &str) -> &'static [&'static str] {
    match resource_type {
        "Patient" => &[
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceasedBoolean",
            "deceasedDateTime",
            "address",
        ],
        "Person" => &["name", "telecom", "gender", "birthDate", "address", "active", "link"],
        "Practitioner" => &["active", "name", "telecom", "address", "gender", "birthDate"],
        "RelatedPerson" => &[
            "active",
            "patient",
            "relationship",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "address",
            "period",
        ],
        "Location" => &["status", "name", "description", "address", "position", "partOf"],
        "Encounter" => {
            &["status", "class", "type", "subject", "participant", "period", "location", "partOf"]
        }
        "Observation" => &[
            "status",
            "category",
            "code",
            "subject",
            "encounter",
            "effectiveDateTime",
            "valueQuantity",
            "valueCodeableConcept",
            "valueString",
            "valueDateTime",
            "valueBoolean",
            "interpretation",
            "note",
            "hasMember",
        ],
        "Condition" => &[
            "clinicalStatus",
            "verificationStatus",
            "category",
            "code",
            "subject",
            "encounter",
            "onsetDateTime",
            "abatementDateTime",
            "note",
        ],
        "AllergyIntolerance" => &[
            "clinicalStatus",
            "verificationStatus",
            "type",
            "category",
            "criticality",
            "code",
            "patient",
            "encounter",
            "note",
            "reaction",
        ],
        "Appointment" => {
            &["status", "serviceType", "appointmentType", "start", "end", "comment", "participant"]
        }
        _ => &[],
    }
}

/// Extension URLs the mapping owns (other extensions are the EMR's).
const OWNED_EXTENSIONS: &[&str] = &[EXT_PERSON_ATTRIBUTE, EXT_NON_CODED_CONDITION];
/// `meta.tag` systems the mapping owns.
const OWNED_TAGS: &[&str] = &[EXT_LOCATION_TAG, EXT_ENCOUNTER_TAG];
/// Identifier systems the mapping owns on a Practitioner or RelatedPerson (their other
/// identifiers are the EMR's).
const OWNED_IDENTIFIER_SYSTEMS: &[&str] =
    &[crate::fhir::map::EXT_PROVIDER_IDENTIFIER, "RelatedPerson"];

/// The resource to write: `current` (the EMR's, `None` when it holds none) with the owned
/// elements of `mapped` laid over it. `skipped` are the elements of `current` the record could
/// not hold (as read by `fhir::unmap`): kept.
pub fn overlay(current: Option<&Value>, mapped: &Value, skipped: &[Skipped]) -> Value {
    let Value::Object(new) = mapped else { return mapped.clone() };
    let Some(Value::Object(cur)) = current else {
        // New to the EMR: the site's Organization is not the EMR's (and may not exist there).
        let mut created = new.clone();
        created.remove("managingOrganization");
        return Value::Object(created);
    };
    let ty = new.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let mut out = cur.clone();
    let kept = |name: &str| -> Vec<Value> {
        let items = cur.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
        items
            .into_iter()
            .enumerate()
            .filter(|(i, _)| skipped.iter().any(|s| s.path == format!("{name}[{i}]")))
            .map(|(_, v)| v)
            .collect()
    };
    for name in owned(ty) {
        let mut value = new.get(*name).cloned();
        if let Some(Value::Array(items)) = &mut value {
            items.extend(kept(name));
        } else if value.is_none() {
            let k = kept(name);
            if !k.is_empty() {
                value = Some(Value::Array(k));
            }
        }
        // Identifiers of systems the mapping does not own stay the EMR's.
        if *name == "identifier" && matches!(ty, "Practitioner" | "RelatedPerson") {
            continue;
        }
        match value {
            Some(v) => out.insert(name.to_string(), v),
            None => out.remove(*name),
        };
    }
    if matches!(ty, "Practitioner" | "RelatedPerson") {
        merge_list(&mut out, new, "identifier", |i| {
            i.get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| OWNED_IDENTIFIER_SYSTEMS.contains(&s))
        });
    }
    merge_list(&mut out, new, "extension", |e| {
        e.get("url").and_then(Value::as_str).is_some_and(|u| OWNED_EXTENSIONS.contains(&u))
    });
    let mut meta = out.get("meta").and_then(Value::as_object).cloned().unwrap_or_default();
    let new_meta = new.get("meta").and_then(Value::as_object).cloned().unwrap_or_default();
    merge_list(&mut meta, &new_meta, "tag", |t| {
        t.get("system").and_then(Value::as_str).is_some_and(|s| OWNED_TAGS.contains(&s))
    });
    if !meta.is_empty() {
        out.insert("meta".into(), Value::Object(meta));
    }
    Value::Object(out)
}

/// `into[name]` = its items that `owned` does not claim, then `from[name]`'s claimed items.
fn merge_list(
    into: &mut Map<String, Value>,
    from: &Map<String, Value>,
    name: &str,
    owned: impl Fn(&Value) -> bool,
) {
    let theirs = into.get(name).and_then(Value::as_array).cloned().unwrap_or_default();
    let mut items: Vec<Value> = theirs.into_iter().filter(|v| !owned(v)).collect();
    items.extend(
        from.get(name)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|v| owned(v))
            .cloned(),
    );
    if items.is_empty() {
        into.remove(name);
    } else {
        into.insert(name.to_string(), Value::Array(items));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn owned_elements_are_replaced_and_the_emrs_own_are_kept() {
        let current = json!({
            "resourceType": "Patient", "id": "p",
            "meta": {"versionId": "3", "tag": [{"system": "urn:emr", "code": "x"}]},
            "extension": [{"url": "urn:emr:ext", "valueString": "keep"}],
            "identifier": [{"system": "urn:nid", "value": "1"}, {"system": "urn:unknown", "value": "2"}],
            "name": [{"family": "Old"}],
            "maritalStatus": {"text": "married"},
            "managingOrganization": {"reference": "Organization/emr"},
            "birthDate": "1990-01-01"
        });
        let mapped = json!({
            "resourceType": "Patient", "id": "p",
            "meta": {"source": "urn:uuid:site"},
            "identifier": [{"system": "urn:nid", "value": "1"}],
            "name": [{"family": "New"}],
            "managingOrganization": {"reference": "Organization/site"}
        });
        let skipped = [Skipped { path: "identifier[1]".into(), reason: "no type".into() }];
        let out = overlay(Some(&current), &mapped, &skipped);
        assert_eq!(out["name"], json!([{"family": "New"}]));
        assert_eq!(
            out["identifier"],
            json!([{"system": "urn:nid", "value": "1"}, {"system": "urn:unknown", "value": "2"}])
        );
        assert_eq!(out["maritalStatus"], current["maritalStatus"], "not mapped: kept");
        assert_eq!(out["extension"], current["extension"], "another URL: kept");
        assert_eq!(out["managingOrganization"], current["managingOrganization"]);
        assert_eq!(out["meta"]["tag"], current["meta"]["tag"]);
        assert!(out.get("birthDate").is_none(), "owned and absent from the record: removed");
        let created = overlay(None, &mapped, &[]);
        assert_eq!(created["name"], mapped["name"]);
        assert!(created.get("managingOrganization").is_none(), "the EMR's organisation is its own");
    }
}
