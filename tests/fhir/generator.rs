//! The generated data set: about 230 deterministic records of every type, with the variety the
//! examples lack (voided and retired records, every obs value kind, obs groups, every name and
//! address part, values that need cleaning). No tests here: `exports` validates it.

use serde_json::{Value, json};

use sitesync::id::EntityType;

use crate::{Rec, stored};

const CONCEPT: u32 = 0xc0;
pub(crate) const LOC: u32 = 0x10;
const PERSON: u32 = 0x20;
const PATIENT: u32 = 0x30;
const PROVIDER: u32 = 0x40;
const VISIT: u32 = 0x50;
const ENCOUNTER: u32 = 0x60;
const OBS: u32 = 0x70;
const CONDITION: u32 = 0x80;
const ALLERGY: u32 = 0x90;
const APPOINTMENT: u32 = 0xa0;
const RELATIONSHIP: u32 = 0xb0;
const ITEM: u32 = 0xd0;
pub(crate) const RELTYPE: u32 = 0xe0;
const META: u32 = 0xf0;

/// A deterministic uuid: `<kind>` and a number.
pub(crate) fn id(kind: u32, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// A small deterministic generator (xorshift), so the data set is the same on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const GIVEN: &[&str] =
    &["Amani", "Baraka", "Chausiku", "Dalila", "Eshe", "Faraji", "Gathoni", "Hamisi"];
const FAMILY: &[&str] = &["Mwangaza", "Otieno", "Wanjiru", "Kamau", "Achieng", "Mutua", "Njoroge"];

/// Collects generated records; numbers collection items and obs.
struct Builder {
    g: Gen,
    out: Vec<Rec>,
    items: usize,
    obs: usize,
}

impl Builder {
    fn item(&mut self) -> String {
        self.items += 1;
        id(ITEM, self.items)
    }

    /// Adds an obs of `concept` with one value field (or none) and extra fields; returns its uuid.
    fn obs(&mut self, concept: String, value: Option<(&str, Value)>, extra: Value) -> String {
        let uuid = id(OBS, self.obs);
        self.obs += 1;
        let i = self.obs;
        let mut o = json!({"uuid": uuid, "person": id(PATIENT, i % 30), "concept": concept,
                           "obsDatetime": format!("2024-02-{:02}T09:{:02}:00.000+0300", 1 + i % 28, i % 60),
                           "encounter": id(ENCOUNTER, i % 30), "location": id(LOC, i % 5)});
        if let Some((field, v)) = value {
            o[field] = v;
        }
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                o[k] = v;
            }
        }
        if self.g.chance(20) {
            o["status"] = json!(self.g.pick(&["PRELIMINARY", "FINAL", "AMENDED"]));
        }
        self.out.push(stored(EntityType::Obs, &o));
        uuid
    }
}

/// About 230 varied records: every type, voided and retired ones, obs of every value kind,
/// obs groups (one voided with voided members), names and addresses with every part, and
/// values that need cleaning.
pub(crate) fn generated() -> Vec<Rec> {
    let mut b = Builder { g: Gen(0x5eed_f00d_1234_5678), out: Vec::new(), items: 0, obs: 0 };
    let mut mapping = 0usize;
    let mut ciel = |code: &str| {
        mapping += 1;
        json!({"uuid": id(ITEM, 50_000 + mapping), "source": "CIEL", "code": code, "mapType": "SAME-AS"})
    };

    // Concepts 0..14
    let concepts = [
        json!({"display": "Weight (kg)", "datatype": "Numeric", "conceptClass": "Misc", "units": "kg", "allowDecimal": true,
               "mappings": [ciel("5089"), {"uuid": id(ITEM, 20_001), "source": "LOINC", "code": "29463-7", "mapType": "SAME-AS"}]}),
        json!({"display": "Pulse", "datatype": "Numeric", "conceptClass": "Finding", "units": "beats/min", "allowDecimal": false, "mappings": [ciel("5087")]}),
        json!({"display": "CD4 count", "datatype": "Numeric", "conceptClass": "Test", "units": "cells/µL", "allowDecimal": false}),
        json!({"display": "Tablets dispensed", "datatype": "Numeric", "conceptClass": "Misc", "units": "tablets"}),
        json!({"display": "HIV test result", "datatype": "Coded", "conceptClass": "Test", "mappings": [ciel("1040")]}),
        json!({"display": "Positive", "datatype": "N/A", "conceptClass": "Misc", "mappings": [ciel("703")]}),
        json!({"display": "Negative", "datatype": "N/A", "conceptClass": "Misc", "mappings": [ciel("664")]}),
        json!({"display": "Clinical notes", "datatype": "Text", "conceptClass": "Misc"}),
        json!({"display": "Date of next visit", "datatype": "Datetime", "conceptClass": "Misc"}),
        json!({"display": "Currently pregnant", "datatype": "Boolean", "conceptClass": "Finding"}),
        json!({"display": "Vital signs", "datatype": "N/A", "conceptClass": "ConvSet"}),
        json!({"display": "Malaria", "datatype": "N/A", "conceptClass": "Diagnosis", "mappings": [ciel("116128")]}),
        json!({"display": "Rash", "datatype": "N/A", "conceptClass": "Symptom", "mappings": [ciel("512")]}),
        json!({"display": "Peanuts", "datatype": "N/A", "conceptClass": "Misc"}),
    ];
    for (i, mut c) in concepts.into_iter().enumerate() {
        c["uuid"] = json!(id(CONCEPT, i));
        b.out.push(stored(EntityType::Concept, &c));
    }
    let concept = |i: usize| id(CONCEPT, i);

    // Locations 0..5
    for i in 0..5 {
        let mut l = json!({"uuid": id(LOC, i), "name": format!("Clinic {i}"), "cityVillage": "Mawingu", "country": "Kenya"});
        match i {
            0 => {
                l["latitude"] = json!("-1.2921");
                l["longitude"] = json!("36.8219");
                l["address1"] = json!("Hospital Road");
                l["address2"] = json!("Block C");
                l["tags"] = json!(["Login Location", "  Visit \t Location "]);
            }
            1 => l["retired"] = json!(true),
            3 => l["latitude"] = json!("0.5"),
            4 => l["parentLocation"] = json!(id(LOC, 0)),
            _ => {}
        }
        b.out.push(stored(EntityType::Location, &l));
    }

    // Names, addresses and attributes shared by persons and patients.
    fn demographics(b: &mut Builder, rec: &mut Value) {
        let mut names = vec![
            json!({"uuid": b.item(), "givenName": b.g.pick(GIVEN), "familyName": b.g.pick(FAMILY), "preferred": true}),
        ];
        if b.g.chance(30) {
            names.push(json!({"uuid": b.item(), "prefix": "Mrs.", "givenName": b.g.pick(GIVEN), "middleName": b.g.pick(GIVEN),
                              "familyNamePrefix": "wa", "familyName": b.g.pick(FAMILY), "familyName2": b.g.pick(FAMILY),
                              "familyNameSuffix": "II", "degree": "BSc", "preferred": false}));
        }
        if b.g.chance(20) {
            names.push(
                json!({"uuid": b.item(), "givenName": "Old", "familyName": "Name", "voided": true}),
            );
        }
        rec["names"] = json!(names);
        rec["gender"] = json!(b.g.pick(&["M", "F", "U", "O"]));
        if b.g.chance(80) {
            rec["birthdate"] = json!(format!(
                "{}-{:02}-{:02}",
                1940 + b.g.below(84),
                1 + b.g.below(12),
                1 + b.g.below(28)
            ));
            rec["birthdateEstimated"] = json!(b.g.chance(30));
        }
        let mut addresses = vec![
            json!({"uuid": b.item(), "address1": "Plot 7", "address2": "Mango Lane", "address3": "Ward 3",
                                        "cityVillage": "Mawingu", "countyDistrict": "Riverbend", "stateProvince": "Lakeside",
                                        "country": "Kenya", "postalCode": "40100", "latitude": "-0.1", "longitude": "34.7", "preferred": true}),
        ];
        if b.g.chance(30) {
            addresses
                .push(json!({"uuid": b.item(), "cityVillage": "Old Town", "preferred": false}));
        }
        if b.g.chance(10) {
            addresses.push(json!({"uuid": b.item(), "country": "Uganda", "voided": true}));
        }
        rec["addresses"] = json!(addresses);
        let mut attributes = vec![
            json!({"uuid": b.item(), "attributeType": "f2648c03-219b-4a99-b0f7-0c897f4f1946", "value": "+254 700 000 000"}),
        ];
        if b.g.chance(50) {
            attributes.push(json!({"uuid": b.item(), "attributeType": "9cd5ed96-8db1-4620-9dc1-cb37918a0895", "value": "Mother's name\u{a0}here"}));
        }
        if b.g.chance(20) {
            attributes.push(json!({"uuid": b.item(), "attributeType": "9cd5ed96-8db1-4620-9dc1-cb37918a0895", "value": "gone", "voided": true}));
        }
        rec["attributes"] = json!(attributes);
    }

    // Persons 0..10
    for i in 0..10 {
        let mut p = json!({"uuid": id(PERSON, i)});
        demographics(&mut b, &mut p);
        if i == 9 {
            p["voided"] = json!(true);
            p["voidReason"] = json!("duplicate");
        }
        b.out.push(stored(EntityType::Person, &p));
    }
    // Patients 0..30
    for i in 0..30 {
        let mut p = json!({"uuid": id(PATIENT, i)});
        demographics(&mut b, &mut p);
        let mut ids = vec![json!({"uuid": b.item(), "identifier": format!("{}MRN", 100 + i),
                                  "identifierType": "0e69a49e-72ab-43af-8bb9-087ecb64dd5e", "location": id(LOC, i % 5), "preferred": true})];
        if b.g.chance(50) {
            ids.push(json!({"uuid": b.item(), "identifier": format!("NID-{i:06}"), "identifierType": "8cab81b7-71de-465e-8901-bbe7d5ac9506"}));
        }
        if b.g.chance(30) {
            // A type without a configured system: left out, with a warning.
            ids.push(json!({"uuid": b.item(), "identifier": format!("ART-{i}"), "identifierType": id(META, 1)}));
        }
        if b.g.chance(10) {
            ids.push(json!({"uuid": b.item(), "identifier": "OLD", "identifierType": "0e69a49e-72ab-43af-8bb9-087ecb64dd5e", "voided": true}));
        }
        p["identifiers"] = json!(ids);
        match i % 10 {
            3 => {
                p["dead"] = json!(true);
                p["deathDate"] = json!("2023-12-01T14:30:00.000+0300");
                p["causeOfDeath"] = json!(concept(11));
            }
            4 => p["dead"] = json!(true),
            5 => p["voided"] = json!(true),
            _ => {}
        }
        b.out.push(stored(EntityType::Patient, &p));
    }
    // Providers 0..5
    for i in 0..5 {
        let mut p = json!({"uuid": id(PROVIDER, i), "identifier": format!("PRV-{i:04}")});
        match i {
            0 | 4 => p["person"] = json!(id(PERSON, i)),
            1 => p["name"] = json!("Nurse Zawadi"),
            2 => {
                p["person"] = json!(id(PERSON, 2));
                p["retired"] = json!(true);
                p["retireReason"] = json!("left");
            }
            _ => {
                // A person this node does not hold.
                p["person"] = json!(id(PERSON, 99));
                p["name"] = json!("Dr. Visiting");
            }
        }
        if i == 4 {
            p["attributes"] = json!([{"uuid": b.item(), "attributeType": "f2648c03-219b-4a99-b0f7-0c897f4f1946", "value": "+254 711 111 111"},
                                     {"uuid": b.item(), "attributeType": id(META, 2), "value": "licence"}]);
        }
        b.out.push(stored(EntityType::Provider, &p));
    }
    // Visits 0..20
    for i in 0..20 {
        let day = 1 + i % 28;
        let mut v = json!({"uuid": id(VISIT, i), "patient": id(PATIENT, i % 30), "visitType": id(META, 3),
                           "startDatetime": format!("2024-02-{day:02}T08:00:00.000+0300")});
        if i % 3 != 0 {
            v["stopDatetime"] = json!(format!("2024-02-{day:02}T11:30:00.000+0300"));
        }
        if i % 4 != 0 {
            v["location"] = json!(id(LOC, i % 5));
        }
        if i == 7 {
            v["voided"] = json!(true);
        }
        v["attributes"] =
            json!([{"uuid": b.item(), "attributeType": id(META, 4), "value": "Insurance"}]);
        b.out.push(stored(EntityType::Visit, &v));
    }
    // Encounters 0..30
    for i in 0..30 {
        let mut e = json!({"uuid": id(ENCOUNTER, i), "patient": id(PATIENT, i % 30), "encounterType": id(META, 5),
                           "encounterDatetime": format!("2024-02-{:02}T09:{:02}:00Z", 1 + i % 28, i % 60)});
        if i % 2 == 0 {
            e["visit"] = json!(id(VISIT, i % 20));
        }
        if i % 5 != 4 {
            e["location"] = json!(id(LOC, i % 5));
        }
        let mut providers = vec![
            json!({"uuid": b.item(), "provider": id(PROVIDER, i % 5), "encounterRole": id(META, 6)}),
        ];
        if i % 3 == 0 {
            providers.push(json!({"uuid": b.item(), "provider": id(PROVIDER, (i + 1) % 5), "encounterRole": id(META, 6), "voided": true}));
            // The same provider twice (two roles): one participant.
            providers.push(json!({"uuid": b.item(), "provider": id(PROVIDER, i % 5), "encounterRole": id(META, 7)}));
        }
        e["encounterProviders"] = json!(providers);
        if i == 11 {
            e["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Encounter, &e));
    }
    // Obs
    let interpretations = [
        "NORMAL",
        "ABNORMAL",
        "CRITICALLY_ABNORMAL",
        "CRITICALLY_HIGH",
        "CRITICALLY_LOW",
        "HIGH",
        "LOW",
        "OFF_SCALE_LOW",
        "OFF_SCALE_HIGH",
        "SIGNIFICANT_CHANGE_DOWN",
        "SIGNIFICANT_CHANGE_UP",
        "RESISTANT",
        "SUSCEPTIBLE",
        "INTERMEDIATE",
        "POSITIVE",
        "NEGATIVE",
    ];
    for (i, interpretation) in interpretations.iter().enumerate() {
        b.obs(
            concept(0),
            Some(("valueNumeric", json!(40.0 + i as f64 * 1.25))),
            json!({"interpretation": interpretation}),
        );
    }
    for i in 0..6 {
        b.obs(concept(1), Some(("valueNumeric", json!(60 + i * 7))), json!({}));
        b.obs(
            concept(2),
            Some(("valueNumeric", json!(350 + i * 50))),
            json!({"comment": "  fasting \u{c} sample "}),
        );
        b.obs(concept(3), Some(("valueNumeric", json!(30))), json!({}));
        b.obs(concept(4), Some(("valueCoded", json!(concept(5 + i % 2)))), json!({}));
        b.obs(
            concept(7),
            Some(("valueText", json!(format!("Patient reports {i} days of cough\nand fever")))),
            json!({}),
        );
        b.obs(
            concept(8),
            Some(("valueDatetime", json!(format!("2024-04-{:02}", 1 + i)))),
            json!({}),
        );
        b.obs(concept(9), Some(("valueBoolean", json!(i % 2 == 0))), json!({}));
    }
    // A date-time without a zone (utc_offset applies), a voided obs, a concept not held here.
    b.obs(concept(8), Some(("valueDatetime", json!("2024-04-09T10:30"))), json!({}));
    b.obs(
        concept(0),
        Some(("valueNumeric", json!(70))),
        json!({"voided": true, "voidReason": "wrong patient"}),
    );
    b.obs(id(CONCEPT, 999), Some(("valueNumeric", json!(1.5))), json!({}));
    // Obs groups: members point at their group; the group itself has no value.
    for i in 0..4 {
        let group = id(OBS, 500 + i);
        let voided_group = i == 3;
        for (c, v) in [(1usize, json!(72)), (0, json!(61.5))] {
            b.obs(
                concept(c),
                Some(("valueNumeric", v)),
                json!({"obsGroup": group, "person": id(PATIENT, i), "voided": voided_group || (i == 1 && c == 0)}),
            );
        }
        let mut o = json!({"uuid": group, "person": id(PATIENT, i), "concept": concept(10), "obsDatetime": "2024-02-10T09:00:00Z"});
        if voided_group {
            o["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Obs, &o));
    }
    // Conditions 0..15
    for i in 0..15 {
        let mut c = json!({"uuid": id(CONDITION, i), "patient": id(PATIENT, i), "clinicalStatus": (["ACTIVE", "INACTIVE", "HISTORY_OF"][i % 3])});
        c["condition"] = match i % 4 {
            0 => json!({"coded": concept(11)}),
            1 => json!({"nonCoded": "Chronic cough"}),
            2 => json!({"coded": concept(11), "nonCoded": "Malaria, clinically diagnosed"}),
            _ => json!({"coded": concept(12)}),
        };
        if i % 2 == 0 {
            c["verificationStatus"] = json!(["CONFIRMED", "PROVISIONAL"][i % 4 / 2]);
        }
        if i % 3 != 0 {
            c["onsetDate"] = json!("2023-06-01");
            c["endDate"] = json!("2024-01-15T00:00:00.000+0300");
        }
        if i % 5 == 0 {
            c["additionalDetail"] = json!("Seen at outreach");
            c["encounter"] = json!(id(ENCOUNTER, i));
        }
        if i == 6 || i == 7 {
            c["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Condition, &c));
    }
    // Allergies 0..10
    for i in 0..10 {
        let ty = ["DRUG", "FOOD", "ENVIRONMENT", "OTHER"][i % 4];
        let mut a = json!({"uuid": id(ALLERGY, i), "patient": id(PATIENT, i)});
        a["allergen"] = match i % 3 {
            0 => json!({"allergenType": ty, "codedAllergen": concept(13)}),
            1 => json!({"allergenType": ty, "nonCodedAllergen": "Bee stings"}),
            _ => {
                json!({"allergenType": ty, "codedAllergen": concept(13), "nonCodedAllergen": "Roasted peanuts"})
            }
        };
        if i % 4 != 3 {
            a["severity"] = json!(["MILD", "MODERATE", "SEVERE"][i % 3]);
        }
        a["reactions"] = match i % 4 {
            0 => {
                json!([{"uuid": b.item(), "reaction": concept(12)}, {"uuid": b.item(), "reactionNonCoded": "Itching"}])
            }
            1 => {
                json!([{"uuid": b.item(), "reaction": concept(12), "reactionNonCoded": "Raised rash"}])
            }
            2 => json!([{"uuid": b.item(), "reaction": concept(12), "voided": true}]),
            _ => json!([]),
        };
        if i % 2 == 0 {
            a["comment"] = json!("Reported by patient");
        }
        if i == 5 {
            a["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Allergy, &a));
    }
    // Appointments 0..12
    let statuses = ["Requested", "Scheduled", "CheckedIn", "Completed", "Cancelled", "Missed"];
    for i in 0..12 {
        let mut a = json!({"uuid": id(APPOINTMENT, i), "patient": id(PATIENT, i), "service": id(META, 8),
                           "startDateTime": format!("2024-03-{:02}T09:00:00.000+0300", 1 + i),
                           "endDateTime": format!("2024-03-{:02}T09:30:00.000+0300", 1 + i),
                           "status": statuses[i % 6]});
        if i % 2 == 0 {
            a["provider"] = json!(id(PROVIDER, i % 5));
            a["location"] = json!(id(LOC, i % 5));
        }
        if i % 3 != 2 {
            a["appointmentKind"] = json!(["Scheduled", "WalkIn", "Virtual"][i % 3]);
            a["comments"] = json!("Follow-up");
        }
        if i == 10 {
            a["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Appointment, &a));
    }
    // Relationships 0..8: person A a person (or a patient), person B a patient.
    for i in 0..8 {
        let mut r = json!({"uuid": id(RELATIONSHIP, i), "relationshipType": id(RELTYPE, 1 + i % 2),
                           "personA": if i == 3 { id(PATIENT, 20) } else { id(PERSON, i) }, "personB": id(PATIENT, i)});
        match i % 4 {
            0 => r["startDate"] = json!("2020-01-01"),
            1 => {
                r["startDate"] = json!("2019-05-01T00:00:00.000+0300");
                r["endDate"] = json!("2023-05-01T00:00:00.000+0300");
            }
            2 => r["startDate"] = json!("2030-01-01"),
            _ => {}
        }
        if i == 6 {
            r["voided"] = json!(true);
        }
        b.out.push(stored(EntityType::Relationship, &r));
    }
    // Generic records have no resource.
    b.out.push(stored(
        EntityType::Generic,
        &json!({"uuid": id(META, 100), "property": "locale", "value": "en"}),
    ));
    b.out.push(stored(
        EntityType::Generic,
        &json!({"uuid": id(META, 101), "list": [1, null, {"a": []}]}),
    ));
    b.out
}
