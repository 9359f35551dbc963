//! The example records of `docs/examples/entities/` against the reviewed golden resources in
//! `tests/fixtures/fhir/` (`FHIR_BLESS=1` rewrites them); the stored and output forms of a record
//! map to the same resource.

use serde_json::Value;

use sitesync::entity;
use sitesync::fhir::{self, Context, Mapper};
use sitesync::id::EntityType;

use crate::{EXPORTED, examples, read_json, root, settings, site, source_of, today};

#[test]
fn examples_match_the_reviewed_golden_resources() {
    let records = examples();
    let source = source_of(&records);
    let (settings, site) = (settings(), site());
    let ctx = Context { settings: &settings, site: &site, today: today(), source: &source };
    let mut mapper = Mapper::new(ctx);
    for (ty, uuid, value) in &records {
        mapper.index(*ty, *uuid, value);
    }
    let bless = std::env::var_os("FHIR_BLESS").is_some();
    let mut failures = Vec::new();
    let mut check = |name: &str, got: Value| {
        let path = root().join(format!("tests/fixtures/fhir/{name}.json"));
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&path, text).expect("write golden file");
            return;
        }
        let want = read_json(&path);
        if got != want {
            failures.push(format!(
                "{name}: output differs from {}\n--- got\n{}\n--- want\n{}",
                path.display(),
                serde_json::to_string_pretty(&got).expect("json"),
                serde_json::to_string_pretty(&want).expect("json"),
            ));
        }
    };
    for name in EXPORTED {
        let ty: EntityType = name.parse().expect("type");
        let (_, uuid, value) =
            records.iter().find(|(t, _, _)| *t == ty).expect("an example of every type");
        let mapped = mapper
            .map(ty, *uuid, value)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name} has a resource"));
        assert_eq!(mapped.warnings, Vec::new(), "{name}: the examples lose nothing");
        let got = mapped.resource.to_json();
        // The output form of `sitesync get` (collections as lists) maps to the same resource.
        let output_form = entity::to_output(ty, value.as_object().expect("object"));
        let again = mapper.map(ty, *uuid, &output_form).expect("maps").expect("resource");
        assert_eq!(again.resource.to_json(), got, "{name}: stored and output forms differ");
        check(name, got);
    }
    check("organization", fhir::model::Resource::Organization(ctx.organization()).to_json());
    for ty in [EntityType::Concept, EntityType::Generic] {
        let (_, uuid, value) = records.iter().find(|(t, _, _)| *t == ty).expect("example");
        assert_eq!(mapper.map(ty, *uuid, value), Ok(None), "{ty} records have no resource");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
