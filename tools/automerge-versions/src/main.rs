//! Standalone benchmark: automerge 0.6.1 vs 0.12.0 on the receiver "apply" hot path.
//!
//! Usage: amcmp <06|12|both|compat> [patients=10000] [reps=3]
//!
//! Workload: 10,000 patient documents x 10 changes = 100,000 changes.
//!   change 1   : full patient record (≈15 scalars + names/identifiers/addresses/attributes maps)
//!   changes 2-10: one commit each touching 1-3 scalar fields / adding one attribute map item
//! Path A: per doc, decode 10 changes, apply to an empty doc, save(), get_heads().
//! Path B: per doc, load() a saved doc holding changes 1-5, decode + apply changes 6-10,
//!         save(), get_heads().

use std::time::{Duration, Instant};

pub const CHANGES_PER_DOC: usize = 10;
pub const PRELOADED: usize = 5; // path B: changes already in the stored doc

/// Fixed 40-byte actor id (the service's node actor).
pub const ACTOR: &[u8; 40] = b"replication-node-0001-actor-id-000000040";

/// Deterministic small PRNG (xorshift64*), so both versions produce the same ops.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uuid(&mut self) -> String {
        let a = self.next();
        let b = self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            (a >> 32) as u32,
            (a >> 16) as u16,
            (a & 0xfff) as u16,
            (b >> 52) as u16 & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }
    pub fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[(self.next() % xs.len() as u64) as usize]
    }
    pub fn date(&mut self) -> String {
        let y = 1930 + self.next() % 90;
        let m = 1 + self.next() % 12;
        let d = 1 + self.next() % 28;
        format!("{y:04}-{m:02}-{d:02}")
    }
}

pub const GIVEN: &[&str] = &["Amina", "John", "Grace", "Peter", "Wanjiru", "Otieno", "Mary", "Joseph"];
pub const FAMILY: &[&str] = &["Kamau", "Odhiambo", "Mwangi", "Njoroge", "Achieng", "Kiprop", "Banda"];
pub const CITY: &[&str] = &["Nairobi", "Kisumu", "Mombasa", "Eldoret", "Nakuru", "Lilongwe", "Kampala"];
pub const COUNTRY: &[&str] = &["Kenya", "Malawi", "Uganda", "Rwanda"];

/// CPU time consumed by this thread so far (ns), from /proc/thread-self/schedstat.
/// Used alongside wall time because the benchmark runs at nice 19 on a shared 2-core box.
pub fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    Duration::from_nanos(s.split_whitespace().next().and_then(|x| x.parse().ok()).unwrap_or(0))
}

/// One measurement of a receiver path, summed over all docs.
#[derive(Clone, Copy, Default, Debug)]
pub struct PathStats {
    pub total: Duration,
    pub cpu: Duration,
    pub load: Duration,
    pub decode: Duration,
    pub apply: Duration,
    pub save: Duration, // save() + get_heads()
    pub saved_bytes: u64,
    pub changes: u64,
    pub docs: u64,
}

pub struct Generated {
    /// raw change bytes, grouped per patient, in commit order
    pub changes: Vec<Vec<Vec<u8>>>,
    /// heads after the last writer commit, per patient
    pub heads: Vec<[u8; 32]>,
}

macro_rules! workload {
    ($modname:ident, $am:ident) => {
        pub mod $modname {
            use super::*;
            use $am::transaction::{CommitOptions, Transactable};
            use $am::{ActorId, Automerge, Change, ObjType, ReadDoc, ROOT};

            fn commit(tx: $am::transaction::Transaction<'_>, t: i64) -> $am::ChangeHash {
                tx.commit_with(CommitOptions::default().with_time(t)).0.expect("non-empty commit")
            }

            /// Writer: build every patient doc and keep the raw bytes of all its changes.
            pub fn generate(patients: usize) -> Generated {
                let mut all = Vec::with_capacity(patients);
                let mut heads = Vec::with_capacity(patients);
                let actor = ActorId::from(&ACTOR[..]);
                for p in 0..patients {
                    let mut r = Rng::new(p as u64 + 1);
                    let mut doc = Automerge::new().with_actor(actor.clone());
                    let mut hashes = Vec::with_capacity(CHANGES_PER_DOC);
                    let t0 = 1_700_000_000i64 + p as i64;

                    // ---- change 1: full patient record ----
                    let mut tx = doc.transaction();
                    let puuid = r.uuid();
                    tx.put(ROOT, "uuid", puuid.as_str()).unwrap();
                    tx.put(ROOT, "personUuid", r.uuid()).unwrap();
                    tx.put(ROOT, "gender", r.pick(&["M", "F"])).unwrap();
                    tx.put(ROOT, "birthdate", r.date()).unwrap();
                    tx.put(ROOT, "birthdateEstimated", false).unwrap();
                    tx.put(ROOT, "birthtime", "08:15:00").unwrap();
                    tx.put(ROOT, "dead", false).unwrap();
                    tx.put(ROOT, "deathDate", ()).unwrap();
                    tx.put(ROOT, "causeOfDeath", ()).unwrap();
                    tx.put(ROOT, "voided", false).unwrap();
                    tx.put(ROOT, "creator", "admin").unwrap();
                    tx.put(ROOT, "dateCreated", t0).unwrap();
                    tx.put(ROOT, "changedBy", "admin").unwrap();
                    tx.put(ROOT, "dateChanged", t0).unwrap();
                    tx.put(ROOT, "version", 1i64).unwrap();

                    let names = tx.put_object(ROOT, "names", ObjType::Map).unwrap();
                    let name_u = r.uuid();
                    let name = tx.put_object(&names, name_u.as_str(), ObjType::Map).unwrap();
                    tx.put(&name, "givenName", r.pick(GIVEN)).unwrap();
                    tx.put(&name, "familyName", r.pick(FAMILY)).unwrap();

                    let ids = tx.put_object(ROOT, "identifiers", ObjType::Map).unwrap();
                    for k in 0..2 {
                        let idm = tx.put_object(&ids, r.uuid(), ObjType::Map).unwrap();
                        tx.put(&idm, "identifier", format!("MRN-{:07}-{}", p, k)).unwrap();
                        tx.put(&idm, "identifierType", if k == 0 { "OpenMRS ID" } else { "National ID" }).unwrap();
                    }

                    let addrs = tx.put_object(ROOT, "addresses", ObjType::Map).unwrap();
                    let addr_u = r.uuid();
                    let addr = tx.put_object(&addrs, addr_u.as_str(), ObjType::Map).unwrap();
                    tx.put(&addr, "cityVillage", r.pick(CITY)).unwrap();
                    tx.put(&addr, "country", r.pick(COUNTRY)).unwrap();

                    let attrs = tx.put_object(ROOT, "attributes", ObjType::Map).unwrap();
                    hashes.push(commit(tx, t0));

                    // ---- changes 2..10: small edits (1-3 fields each) ----
                    for e in 1..CHANGES_PER_DOC {
                        let t = t0 + 60 * e as i64;
                        let mut tx = doc.transaction();
                        match e % 4 {
                            1 => {
                                tx.put(&name, "familyName", r.pick(FAMILY)).unwrap();
                                tx.put(ROOT, "dateChanged", t).unwrap();
                            }
                            2 => {
                                tx.put(&addr, "cityVillage", r.pick(CITY)).unwrap();
                                tx.put(&addr, "country", r.pick(COUNTRY)).unwrap();
                                tx.put(ROOT, "dateChanged", t).unwrap();
                            }
                            3 => {
                                let a = tx.put_object(&attrs, r.uuid(), ObjType::Map).unwrap();
                                tx.put(&a, "value", format!("+2547{:08}", r.next() % 100_000_000)).unwrap();
                            }
                            _ => {
                                tx.put(ROOT, "birthdate", r.date()).unwrap();
                                tx.put(ROOT, "birthdateEstimated", r.next() % 2 == 0).unwrap();
                            }
                        }
                        hashes.push(commit(tx, t));
                    }

                    let raw: Vec<Vec<u8>> = hashes
                        .iter()
                        .map(|h| doc.get_change_by_hash(h).expect("change").raw_bytes().to_vec())
                        .collect();
                    let hd = doc.get_heads();
                    assert_eq!(hd.len(), 1);
                    heads.push(hd[0].0);
                    all.push(raw);
                }
                Generated { changes: all, heads }
            }

            fn decode(raw: &[Vec<u8>]) -> Vec<Change> {
                raw.iter().map(|b| Change::from_bytes(b.clone()).expect("decode")).collect()
            }

            /// Path A: materialize each doc from scratch from its 10 changes.
            pub fn path_a(g: &Generated) -> PathStats {
                let mut s = PathStats::default();
                let cpu0 = thread_cpu();
                let start = Instant::now();
                for (p, raw) in g.changes.iter().enumerate() {
                    let t0 = Instant::now();
                    let changes = decode(raw);
                    let t1 = Instant::now();
                    let mut doc = Automerge::new();
                    doc.apply_changes(changes).expect("apply");
                    let t2 = Instant::now();
                    let bytes = doc.save();
                    let heads = doc.get_heads();
                    let t3 = Instant::now();
                    assert_eq!(heads.len(), 1);
                    assert_eq!(heads[0].0, g.heads[p], "heads mismatch (path A, doc {p})");
                    s.decode += t1 - t0;
                    s.apply += t2 - t1;
                    s.save += t3 - t2;
                    s.saved_bytes += bytes.len() as u64;
                    s.changes += raw.len() as u64;
                    s.docs += 1;
                }
                s.total = start.elapsed();
                s.cpu = thread_cpu() - cpu0;
                s
            }

            /// Path B setup (untimed): saved doc of the first PRELOADED changes, per patient.
            pub fn prepare_b(g: &Generated) -> Vec<Vec<u8>> {
                g.changes
                    .iter()
                    .map(|raw| {
                        let mut doc = Automerge::new();
                        doc.apply_changes(decode(&raw[..PRELOADED])).expect("apply");
                        doc.save()
                    })
                    .collect()
            }

            /// Path B: load existing doc (changes 1-5), apply changes 6-10, save.
            pub fn path_b(g: &Generated, saved: &[Vec<u8>]) -> PathStats {
                let mut s = PathStats::default();
                let cpu0 = thread_cpu();
                let start = Instant::now();
                for (p, raw) in g.changes.iter().enumerate() {
                    let t0 = Instant::now();
                    let mut doc = Automerge::load(&saved[p]).expect("load");
                    let t1 = Instant::now();
                    let changes = decode(&raw[PRELOADED..]);
                    let t2 = Instant::now();
                    doc.apply_changes(changes).expect("apply");
                    let t3 = Instant::now();
                    let bytes = doc.save();
                    let heads = doc.get_heads();
                    let t4 = Instant::now();
                    assert_eq!(heads.len(), 1);
                    assert_eq!(heads[0].0, g.heads[p], "heads mismatch (path B, doc {p})");
                    s.load += t1 - t0;
                    s.decode += t2 - t1;
                    s.apply += t3 - t2;
                    s.save += t4 - t3;
                    s.saved_bytes += bytes.len() as u64;
                    s.changes += (raw.len() - PRELOADED) as u64;
                    s.docs += 1;
                }
                s.total = start.elapsed();
                s.cpu = thread_cpu() - cpu0;
                s
            }
        }
    };
}

workload!(v06, am06);
workload!(v12, am12);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn report(ver: &str, path: &str, runs: &[PathStats]) {
    let ms = |d: Duration, n: u64| d.as_secs_f64() * 1e3 / n as f64;
    let d = runs[0].docs;
    let c = runs[0].changes;
    for (i, r) in runs.iter().enumerate() {
        println!(
            "  run {i}: {ver} path {path}: wall {:.3}s ({:.0} changes/s)  cpu {:.3}s ({:.0} changes/s)",
            r.total.as_secs_f64(),
            c as f64 / r.total.as_secs_f64(),
            r.cpu.as_secs_f64(),
            c as f64 / r.cpu.as_secs_f64()
        );
    }
    let tot = median(runs.iter().map(|r| r.total.as_secs_f64()).collect());
    let cpu = median(runs.iter().map(|r| r.cpu.as_secs_f64()).collect());
    let med = |f: fn(&PathStats) -> Duration| median(runs.iter().map(|r| ms(f(r), d)).collect());
    println!(
        "RESULT version={ver} path={path} docs={d} changes={c} median_wall_s={tot:.3} changes_per_s={:.0} \
         per_doc_ms={:.4} median_cpu_s={cpu:.3} cpu_changes_per_s={:.0} cpu_per_doc_ms={:.4} load_ms={:.4} decode_ms={:.4} apply_ms={:.4} save+heads_ms={:.4} saved_bytes_per_doc={:.0}",
        c as f64 / tot,
        tot * 1e3 / d as f64,
        c as f64 / cpu,
        cpu * 1e3 / d as f64,
        med(|r| r.load),
        med(|r| r.decode),
        med(|r| r.apply),
        med(|r| r.save),
        runs[0].saved_bytes as f64 / d as f64
    );
}

macro_rules! run_version {
    ($m:ident, $ver:expr, $patients:expr, $reps:expr) => {{
        let t = Instant::now();
        let g = $m::generate($patients);
        let gen_s = t.elapsed().as_secs_f64();
        let n: usize = g.changes.iter().map(|c| c.len()).sum();
        let bytes: usize = g.changes.iter().flatten().map(|c| c.len()).sum();
        println!(
            "{}: writer generated {} changes in {:.2}s ({:.0} changes/s), raw change bytes avg {:.1} (first change avg {:.1})",
            $ver,
            n,
            gen_s,
            n as f64 / gen_s,
            bytes as f64 / n as f64,
            g.changes.iter().map(|c| c[0].len()).sum::<usize>() as f64 / g.changes.len() as f64
        );
        let a: Vec<PathStats> = (0..$reps).map(|_| $m::path_a(&g)).collect();
        report($ver, "A", &a);
        let saved = $m::prepare_b(&g);
        let b: Vec<PathStats> = (0..$reps).map(|_| $m::path_b(&g, &saved)).collect();
        report($ver, "B", &b);
    }};
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let which = args.get(1).map(String::as_str).unwrap_or("both");
    let patients: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(10_000);
    let reps: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    match which {
        "06" => run_version!(v06, "0.6.1", patients, reps),
        "12" => run_version!(v12, "0.12.0", patients, reps),
        "both" => {
            run_version!(v06, "0.6.1", patients, reps);
            run_version!(v12, "0.12.0", patients, reps);
        }
        "compat" => {
            // Cross-version check: do both writers produce byte-identical changes, and can
            // each version apply the other's changes to the same heads?
            let g06 = v06::generate(patients);
            let g12 = v12::generate(patients);
            let identical = g06.changes == g12.changes;
            println!("change bytes identical across versions: {identical}");
            println!("heads identical across versions: {}", g06.heads == g12.heads);
            let x = Generated { changes: g06.changes.clone(), heads: g06.heads.clone() };
            let s = v12::path_a(&x);
            println!("0.12.0 applied 0.6.1 changes: {} docs OK", s.docs);
            let s = v06::path_a(&Generated { changes: g12.changes, heads: g12.heads });
            println!("0.6.1 applied 0.12.0 changes: {} docs OK", s.docs);
            let s = v12::path_b(&x, &v06::prepare_b(&x));
            println!("0.12.0 loaded 0.6.1-saved docs + applied: {} docs OK", s.docs);
        }
        _ => panic!("usage: amcmp <06|12|both|compat> [patients] [reps]"),
    }
}
