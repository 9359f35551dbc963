//! `sitesync demo`: two clinics in a temporary folder, records written at both while offline,
//! bundles carried both ways, convergence and a same-field conflict shown. Uses the same node
//! operations as the CLI.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::id::EntityType;
use crate::node::Node;

const PATIENTS: usize = 300;

fn uuid(tag: u32, n: usize) -> String {
    format!("{tag:08x}-0000-4000-8000-{n:012x}")
}

fn patient(n: usize, site: &str) -> Value {
    let given = ["Amina", "Joseph", "Grace", "Peter", "Fatuma", "Daniel", "Esther", "Moses"];
    let family = ["Okello", "Wanjiru", "Mwangi", "Achieng", "Kiprop", "Nakato", "Otieno"];
    json!({
        "uuid": uuid(0xa, n),
        "identifiers": [{"uuid": uuid(0xb, n), "identifier": format!("{site}-{n:05}"),
                         "identifierType": "05a29f94-c0ed-11e2-94be-8c13b969e334", "preferred": true}],
        "names": [{"uuid": uuid(0xc, n), "givenName": given[n % given.len()],
                   "familyName": family[n % family.len()], "preferred": true}],
        "gender": if n.is_multiple_of(2) { "F" } else { "M" },
        "birthdate": format!("19{:02}-0{}-1{}", 60 + n % 40, 1 + n % 9, n % 10),
    })
}

fn short(id: &impl std::fmt::Display) -> String {
    id.to_string().chars().take(12).collect()
}

fn step(title: &str) {
    crate::say!("\n== {title}");
}

fn carry(from: &Node, to: &Node, dir: &Path, name: &str) -> Result<()> {
    let path = dir.join(name);
    let since = to.store.vector()?;
    let out = from.export(&path, &since, Some(to.id()), |_, _| {})?;
    let r = to.import(&path, |_, _| {})?;
    crate::say!(
        "   {} -> {}: bundle {name} with {} batches ({} changes, {} bytes); applied {} batches, \
         {} already present, {} rejected",
        from.config.name,
        to.config.name,
        out.batches,
        out.changes,
        out.bytes,
        r.applied.applied_batches,
        r.applied.present,
        r.applied.rejected.len()
    );
    Ok(())
}

fn digest(node: &Node) -> Result<String> {
    Ok(node.summary()?.digest.to_hex().to_string())
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let dir = tmp.path();
    crate::say!("sitesync demo: two clinics, no network, a USB stick between them");
    crate::say!("workspace {}", dir.display());

    step("1. Two nodes, each with its own ed25519 key, trusting each other");
    let mut north = Node::init(&dir.join("north"), "clinic-north")?;
    let mut south = Node::init(&dir.join("south"), "clinic-south")?;
    north.trust_add(south.id(), Some("clinic-south".into()))?;
    south.trust_add(north.id(), Some("clinic-north".into()))?;
    crate::say!("   clinic-north  {}", north.id());
    crate::say!("   clinic-south  {}", south.id());

    step(&format!("2. clinic-north registers {PATIENTS} patients and carries them south"));
    let list: Vec<Value> = (0..PATIENTS).map(|n| patient(n, "N")).collect();
    north.put(EntityType::Patient, &Value::Array(list))?;
    carry(&north, &south, dir, "north-1.ssb")?;
    crate::say!("   digests equal: {}", digest(&north)? == digest(&south)?);

    step("3. A week apart: both clinics keep working offline");
    let shared = uuid(0xa, 7);
    let mut rec = north.store.get(&format!("patient/{shared}").parse()?)?.context("patient 7")?.0;
    let base = rec.clone();
    rec["addresses"] = json!([{"uuid": uuid(0xd, 7), "cityVillage": "Gulu", "country": "Uganda"}]);
    rec["birthdate"] = json!("1967-03-02");
    north.put(EntityType::Patient, &rec)?;
    crate::say!(
        "   clinic-north: patient {} gets an address and birthdate 1967-03-02",
        short(&shared)
    );
    let mut rec = base;
    rec["attributes"] = json!([{"uuid": uuid(0xe, 7), "attributeType": "14d4f066-15f5-102d-96e4-000c29c2a5d7", "value": "+256 700 000 007"}]);
    rec["birthdate"] = json!("1967-03-20");
    south.put(EntityType::Patient, &rec)?;
    crate::say!("   clinic-south: same patient gets a phone attribute and birthdate 1967-03-20");
    let more: Vec<Value> = (0..40).map(|n| patient(1000 + n, "S")).collect();
    south.put(EntityType::Patient, &Value::Array(more))?;
    crate::say!("   clinic-south registers 40 new patients");
    crate::say!("   digests differ: {}", digest(&north)? != digest(&south)?);

    step("4. The USB stick goes both ways (each bundle holds only what the other lacks)");
    carry(&south, &north, dir, "south-1.ssb")?;
    carry(&north, &south, dir, "north-2.ssb")?;
    let (dn, ds) = (digest(&north)?, digest(&south)?);
    crate::say!("   clinic-north digest {}", &dn[..16]);
    crate::say!("   clinic-south digest {}", &ds[..16]);
    crate::say!("   converged: {}", dn == ds);

    step(
        "5. The shared patient on both nodes: different fields merged, the same field kept as a conflict",
    );
    let id = format!("patient/{shared}").parse()?;
    let (on_north, conflicts) = north.store.get(&id)?.context("patient on north")?;
    let (on_south, _) = south.store.get(&id)?.context("patient on south")?;
    crate::say!("   identical on both nodes: {}", on_north == on_south);
    crate::say!("   address kept: {}", on_north["addresses"][0]["cityVillage"]);
    crate::say!("   phone kept:   {}", on_north["attributes"][0]["value"]);
    for c in &conflicts {
        crate::say!("   conflict on {}:", c.path);
        for (i, v) in c.values.iter().enumerate() {
            let who = v.author.as_deref().map_or("?".into(), |a| {
                let node = a.split(':').next().unwrap_or(a);
                if node == north.id().to_string() { "clinic-north" } else { "clinic-south" }
                    .to_string()
            });
            let mark =
                if i == c.winner { "  <- shown until an administrator resolves it" } else { "" };
            crate::say!("     {} from {who}{mark}", v.value);
        }
    }

    step("6. Importing the same bundle again changes nothing");
    let before = digest(&north)?;
    let r = north.import(&dir.join("south-1.ssb"), |_, _| {})?;
    crate::say!(
        "   applied {} batches, {} already present; digest unchanged: {}",
        r.applied.applied_batches,
        r.applied.present,
        before == digest(&north)?
    );
    let s = north.summary()?;
    let records: u64 = s.entities.values().sum();
    crate::say!(
        "\ndone in {:.1} s: {records} records on each node, {} batches from {} authors",
        started.elapsed().as_secs_f64(),
        s.batches,
        s.vector.0.len()
    );
    Ok(())
}
