//! What a mapping reads besides the record: the settings decide what is expressible
//! (identifier systems, the uuid identifier, `utc_offset`), and today's date the precision of an
//! estimated birth date.

use serde_json::json;

use sitesync::fhir::{Context, FhirSettings, Mapper};
use sitesync::id::EntityType;

use crate::{examples, settings, site, source_of, stored, today};

#[test]
fn settings_decide_what_is_expressible() {
    let records = examples();
    let source = source_of(&records);
    let site = site();
    let patient = records.iter().find(|r| r.0 == EntityType::Patient).expect("patient").clone();
    let visit_no_zone = stored(
        EntityType::Visit,
        &json!({"uuid": "b0000000-0000-4000-8000-000000000010",
                "patient": "4a38207f-3a68-401d-b9f8-8324419c9ef3",
                "visitType": "5c19e72e-aa5a-4a56-ad7e-ecb4684c6466",
                "startDatetime": "2024-03-05T08:00"}),
    );

    // Without identifier systems and without the uuid identifier, a patient has no identifier.
    let bare = FhirSettings::from_toml("patient_uuid_identifier = false").expect("settings");
    let ctx = Context { settings: &bare, site: &site, today: today(), source: &source };
    let err = Mapper::new(ctx).map(patient.0, patient.1, &patient.2).expect_err("no identifier");
    assert_eq!(err.field, "identifiers");
    // Default settings: the uuid identifier only; both configured types are left out, with
    // a warning each.
    let defaults = FhirSettings::default();
    let ctx = Context { settings: &defaults, site: &site, today: today(), source: &source };
    let mapped =
        Mapper::new(ctx).map(patient.0, patient.1, &patient.2).expect("maps").expect("some");
    let json = mapped.resource.to_json();
    assert_eq!(
        json["identifier"],
        json!([{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:4a38207f-3a68-401d-b9f8-8324419c9ef3"}])
    );
    assert_eq!(mapped.warnings.len(), 2, "{:?}", mapped.warnings);
    assert_eq!(json["meta"]["source"], json!("urn:uuid:5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a5a"));
    // A date-time without a zone needs utc_offset.
    let err = Mapper::new(ctx)
        .map(visit_no_zone.0, visit_no_zone.1, &visit_no_zone.2)
        .expect_err("no zone");
    assert_eq!(err.field, "startDatetime");
    assert!(err.reason.contains("utc_offset"), "{err}");
    let with_offset = settings();
    let ctx = Context { settings: &with_offset, site: &site, today: today(), source: &source };
    let mapped =
        Mapper::new(ctx).map(visit_no_zone.0, visit_no_zone.1, &visit_no_zone.2).expect("ok");
    let json = mapped.expect("some").resource.to_json();
    assert_eq!(json["period"]["start"], json!("2024-03-05T08:00:00+03:00"));
}

#[test]
fn estimated_birth_dates_follow_fhir2_precision() {
    let records = examples();
    let source = source_of(&records);
    let (settings, site) = (settings(), site());
    let person = |birthdate: &str| {
        stored(
            EntityType::Person,
            &json!({"uuid": "b0000000-0000-4000-8000-000000000020", "gender": "F",
                    "names": [{"uuid": "b0000000-0000-4000-8000-000000000021", "givenName": "A"}],
                    "birthdate": birthdate, "birthdateEstimated": true}),
        )
    };
    for (birthdate, want) in [
        ("2010-06-01", "2010"),
        ("2021-06-01", "2021-06"),
        ("2019-03-21", "2019-03"),
        ("2018-03-20", "2018"),
    ] {
        let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
        let (ty, uuid, value) = person(birthdate);
        let r = Mapper::new(ctx).map(ty, uuid, &value).expect("maps").expect("some");
        assert_eq!(r.resource.to_json()["birthDate"], json!(want), "{birthdate}");
    }
}
