//! `sitesync demo`: a district server and three clinics on loopback QUIC in a temporary folder.
//! One clinic is cut off for a simulated week of clinic work while every site keeps writing;
//! then the link heals and every node converges, with a same-field conflict kept and the bytes
//! moved shown; the district resolves the conflict and one round closes it everywhere. Uses the
//! same node operations, transport and sessions as `serve`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::config::Peer;
use crate::id::EntityType;
use crate::node::Node;
use crate::node::serve;
use crate::node::session_host::SessionReport;
use crate::protocol::message::Role;
use crate::say;

const PATIENTS: usize = 200;
const DAYS: usize = 7;
const VISITS_PER_DAY: usize = 12;

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

fn encounter(n: usize, patient: usize, day: usize, location: &str) -> Value {
    json!({
        "uuid": uuid(0xe, n),
        "patient": uuid(0xa, patient),
        "encounterType": "67a71486-1a54-468f-ac3e-7091a9a79584",
        "encounterDatetime": format!("2026-03-{:02}T09:{:02}:00Z", 2 + day, n % 60),
        "location": location,
    })
}

struct Site {
    name: &'static str,
    node: Arc<Node>,
    endpoint: quinn::Endpoint,
}

fn step(title: &str) {
    say!("\n== {title}");
}

fn digest(node: &Node) -> Result<String> {
    Ok(node.summary()?.digest.to_hex().to_string())
}

fn line(from: &str, r: &SessionReport) {
    say!(
        "   {from:<13} <-> district: sent {:>3} batches, received {:>3} ({:>7} B up, {:>7} B down) {}",
        r.batches_sent,
        r.batches_received,
        r.bytes_sent,
        r.bytes_received,
        if r.complete { String::new() } else { format!("[{}]", r.outcome) }
    );
}

/// One sync round: every connected clinic syncs with the district server.
async fn round(parent: &Peer, clinics: &[&Site], moved: &mut (u64, u64)) {
    for c in clinics {
        let r = serve::sync_once(c.node.clone(), &c.endpoint, parent, None).await;
        moved.0 += r.bytes_sent;
        moved.1 += r.bytes_received;
        line(c.name, &r);
    }
}

pub fn run() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run_async())
}

async fn run_async() -> Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("creating a temporary folder")?;
    let dir = tmp.path();
    say!("sitesync demo: a district server and three clinics on loopback QUIC");
    say!("workspace {}", dir.display());

    step("1. Four nodes, each with its own ed25519 key; the clinics dial the district");
    let mut district = Node::init(&dir.join("district"), "district")?;
    let names = ["clinic-north", "clinic-south", "clinic-east"];
    let mut clinics = Vec::new();
    for name in names {
        clinics.push(Node::init(&dir.join(name), name)?);
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let addr = socket.local_addr()?;
    drop(socket);
    district.config.listen = Some(addr);
    for (c, name) in clinics.iter().zip(names) {
        let role = Role::Child;
        district.config.peers.push(Peer {
            node_id: c.id(),
            role,
            addr: None,
            name: Some(name.into()),
            scope: Default::default(),
        });
    }
    district.save_config()?;
    district.publish_roster()?;
    let parent = Peer {
        node_id: district.id(),
        role: Role::Parent,
        addr: Some(addr),
        name: Some("district".into()),
        scope: Default::default(),
    };
    for c in &mut clinics {
        c.config.peers.push(parent.clone());
        c.save_config()?;
        c.publish_roster()?;
    }
    say!("   district      {} listening on {addr}", crate::id::short(&district.id().to_string()));
    for (c, name) in clinics.iter().zip(names) {
        say!(
            "   {name:<13} {}  (trusts only the district; the district's signed roster vouches for the others)",
            crate::id::short(&c.id().to_string())
        );
    }
    let district = Arc::new(district);
    let allowed = district.config.peers.iter().map(|p| p.node_id).collect();
    let server = crate::transport::server_config(district.keypair(), allowed)?;
    let server_endpoint = quinn::Endpoint::server(server, addr)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let accept =
        tokio::spawn(serve::accept_loop(district.clone(), server_endpoint.clone(), stop_rx));
    let mut sites = Vec::new();
    for (c, name) in clinics.into_iter().zip(names) {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
        sites.push(Site { name, node: Arc::new(c), endpoint });
    }
    let mut moved = (0u64, 0u64);

    step(&format!(
        "2. clinic-north registers {PATIENTS} patients; sync rounds share them everywhere"
    ));
    let list: Vec<Value> = (0..PATIENTS).map(|n| patient(n, "N")).collect();
    sites[0].node.put(EntityType::Patient, &Value::Array(list))?;
    let all: Vec<&Site> = sites.iter().collect();
    round(&parent, &all, &mut moved).await;
    round(&parent, &all, &mut moved).await;

    step(&format!("3. clinic-east loses its link for {DAYS} days; every site keeps working"));
    let shared = uuid(0xa, 7);
    let loc = |i: usize| uuid(0x10, i);
    let connected: Vec<&Site> = sites[..2].iter().collect();
    for day in 0..DAYS {
        for (i, site) in sites.iter().enumerate() {
            let visits: Vec<Value> = (0..VISITS_PER_DAY)
                .map(|v| {
                    let n = 100_000 * (i + 1) + day * 100 + v;
                    encounter(n, (n * 7) % PATIENTS, day, &loc(i))
                })
                .collect();
            site.node.put(EntityType::Encounter, &Value::Array(visits))?;
        }
        if day == 2 {
            // The same patient's birthdate corrected differently at two sites.
            for (site, date) in [(&sites[0], "1967-03-02"), (&sites[2], "1967-03-20")] {
                let id = format!("patient/{shared}").parse()?;
                let mut rec = site.node.store.get(&id)?.context("shared patient")?.0;
                rec["birthdate"] = json!(date);
                site.node.put(EntityType::Patient, &rec)?;
            }
        }
        say!(
            "   day {}: {} visits at each site; north and south sync, east is offline",
            day + 1,
            VISITS_PER_DAY
        );
        round(&parent, &connected, &mut moved).await;
    }
    let d_north = digest(&sites[0].node)?;
    let d_east = digest(&sites[2].node)?;
    say!("   north and east now differ: {}", d_north != d_east);

    step("4. The link heals: two rounds and every node converges");
    round(&parent, &all, &mut moved).await;
    round(&parent, &all, &mut moved).await;
    let dd = digest(&district)?;
    say!("   district      digest {}", crate::id::short(&dd));
    let mut converged = true;
    for s in &sites {
        let d = digest(&s.node)?;
        converged &= d == dd;
        say!("   {:<13} digest {}", s.name, crate::id::short(&d));
    }
    say!("   converged: {converged}");

    step("5. The conflict is kept, identically on every node");
    let id = format!("patient/{shared}").parse()?;
    let (record, conflicts) = sites[1].node.store.get(&id)?.context("patient on south")?;
    say!(
        "   clinic-south shows birthdate {} until an administrator resolves it",
        record["birthdate"]
    );
    for c in &conflicts {
        say!("   conflict on {}:", c.path);
        for (i, v) in c.values.iter().enumerate() {
            let node = v.author.as_deref().and_then(|a| a.split(':').next()).unwrap_or("?");
            let who =
                sites.iter().find(|s| s.node.id().to_string() == node).map_or("?", |s| s.name);
            say!(
                "     {} from {who}{}",
                v.value,
                if i == c.winner { "  <- current winner" } else { "" }
            );
        }
    }

    step("6. The district resolves it; one round closes it everywhere");
    let open = district.conflicts()?;
    let c = open
        .iter()
        .map(|v| &v.conflict)
        .find(|c| c.is_open() && c.entity == id)
        .context("the conflict at the district")?;
    say!("   district: conflict {} open ({} values); keeping value 0", c.id, c.values.len());
    district.resolve(&c.id.clone(), crate::node::Choice::Take(0))?;
    round(&parent, &all, &mut moved).await;
    let mut closed = true;
    for (name, node) in
        std::iter::once(("district", &district)).chain(sites.iter().map(|s| (s.name, &s.node)))
    {
        let still =
            node.conflicts()?.iter().any(|v| v.conflict.is_open() && v.conflict.entity == id);
        let birthdate =
            node.store.get(&id)?.map(|(r, _)| r["birthdate"].clone()).unwrap_or_default();
        closed &= !still;
        say!("   {name:<13} open: {still}, birthdate {birthdate}");
    }
    say!("   closed on every node: {closed}");

    let s = district.summary()?;
    let records: u64 = s.entities.values().sum();
    say!(
        "\ndone in {:.1} s: {records} records on every node; {} KB up and {} KB down over QUIC in all rounds",
        started.elapsed().as_secs_f64(),
        moved.0 / 1024,
        moved.1 / 1024
    );
    let _ = stop_tx.send(true);
    server_endpoint.close(0u32.into(), b"demo done");
    for s in &sites {
        s.endpoint.close(0u32.into(), b"demo done");
    }
    let _ = accept.await;
    if !converged {
        anyhow::bail!("the nodes did not converge");
    }
    if !closed {
        anyhow::bail!("the resolution did not close the conflict everywhere");
    }
    Ok(())
}
