//! Damaged bundle files: a flipped bit anywhere is refused with one clear line and changes
//! nothing; a truncated file applies the whole batches before the cut and says what is missing.

use rand::Rng;
use serde_json::{Value, json};

use crate::{
    ID_TYPE, Node, assert_imported, assert_no_problems, error_problems, exported_batches, has_line,
    patient, patients_in, seeded, seq_of, uuid,
};

/// Frame boundaries of a bundle, from the format in the `bundle` module docs:
/// `(offset where frames start, end offset of each frame, offset of the trailer)`.
fn frame_layout(bytes: &[u8]) -> (usize, Vec<usize>, usize) {
    assert_eq!(&bytes[..8], b"SSBNDL\r\n", "bundle magic");
    assert_eq!(u16::from_le_bytes([bytes[8], bytes[9]]), 1, "bundle version");
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let frames_start = 14 + u32_at(10) as usize + 32;
    let trailer = bytes.len() - 40;
    assert_eq!(&bytes[trailer..trailer + 8], b"SSBEND\r\n", "trailer magic");
    let mut ends = Vec::new();
    let mut at = frames_start;
    while at < trailer {
        at += 4 + u32_at(at) as usize + 32;
        ends.push(at);
    }
    assert_eq!(at, trailer, "frames fill the frame section");
    (frames_start, ends, trailer)
}

#[test]
fn corrupted_bundles_are_rejected_at_every_byte() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("corrupted_bundles_are_rejected_at_every_byte");
    let a = Node::init(tmp.path(), "site-a");
    let receivers = [Node::init(tmp.path(), "site-b"), Node::init(tmp.path(), "site-c")];
    let rec = json!({
        "uuid": uuid(&mut rng),
        "identifiers": [{"uuid": uuid(&mut rng), "identifier": "M1", "identifierType": ID_TYPE}],
        "names": [{"uuid": uuid(&mut rng), "givenName": "Amina"}],
        "gender": "F",
    });
    a.put("patient", &rec);
    let bundle = tmp.path().join("one.ssb");
    a.export(&bundle, &[]);
    let good = std::fs::read(&bundle).expect("read bundle");
    assert!(good.len() < 1200, "a one-patient bundle is small ({} bytes)", good.len());
    let empty_digest = receivers[0].digest();
    for r in &receivers {
        r.trust(&a);
    }

    // Every byte position, split between two receivers: odd positions get every bit flipped,
    // even positions one random bit.
    let flips: Vec<(usize, u8)> = (0..good.len())
        .map(|i| (i, if i % 2 == 1 { 0xFF } else { 1u8 << rng.random_range(0..8u32) }))
        .collect();
    let problems: Vec<String> = std::thread::scope(|s| {
        let workers: Vec<_> = receivers
            .iter()
            .enumerate()
            .map(|(w, node)| {
                let (good, flips, dir) = (&good, &flips, tmp.path());
                s.spawn(move || {
                    let file = dir.join(format!("flipped-{w}.ssb"));
                    let mut problems = Vec::new();
                    for &(i, mask) in flips.iter().filter(|(i, _)| i % 2 == w) {
                        let mut bytes = good.clone();
                        bytes[i] ^= mask;
                        std::fs::write(&file, &bytes).expect("write");
                        let r = node.import(&file);
                        let what = format!("byte {i} ^ {mask:#04x}");
                        let mut found = error_problems(&what, &r, 1, &["flipped-"]);
                        let clear = ["corrupt", "checksum", "not a sitesync bundle", "version"];
                        if !clear.iter().any(|c| r.stderr.contains(c)) {
                            found.push(format!("{what}: unclear message: {}", r.stderr.trim()));
                        }
                        if !r.stdout.is_empty() {
                            found.push(format!("{what}: printed an import report: {}", r.stdout));
                        }
                        problems.extend(found);
                    }
                    problems
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_no_problems(&problems);

    // Bytes appended after the declared end are corruption too.
    let mut longer = good.clone();
    longer.push(0);
    let file = tmp.path().join("longer.ssb");
    std::fs::write(&file, &longer).expect("write");
    assert_no_problems(&error_problems(
        "appended byte",
        &receivers[0].import(&file),
        1,
        &["longer.ssb", "corrupt"],
    ));

    for r in &receivers {
        let s = r.status();
        assert_eq!(s["digest"], json!(empty_digest), "no corrupted bundle changed the store");
        assert_eq!((s["batches"].as_u64(), patients_in(&s)), (Some(0), 0));
    }
    // The intact bundle applies, so the rejections above were about the damage.
    assert_imported(&receivers[0].import(&bundle), 1, 0);
    assert_eq!(receivers[0].digest(), a.digest());
}

#[test]
fn truncated_bundles_apply_the_whole_batches_before_the_cut() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("truncated_bundles_apply_the_whole_batches_before_the_cut");
    let a = Node::init(tmp.path(), "site-a");
    let sizes = [3usize, 5, 2, 7, 4, 6];
    let mut n = 0;
    for &size in &sizes {
        let list: Vec<Value> = (0..size).map(|i| patient(&mut rng, n + i)).collect();
        n += size;
        a.put("patient", &Value::Array(list));
    }
    let author = a.author();
    let bundle = tmp.path().join("six.ssb");
    assert_eq!(exported_batches(&a.export(&bundle, &[])), 6);
    let bytes = std::fs::read(&bundle).expect("read");
    let (start, ends, trailer) = frame_layout(&bytes);
    assert_eq!(ends.len(), 6, "one frame per batch");
    let frame_start = |k: usize| if k == 0 { start } else { ends[k - 1] };

    // (cut offset, whole frames before it)
    let mut cuts =
        vec![(start, 0), (start + 2, 0), (ends[2], 3), (trailer + 20, 6), (bytes.len() - 1, 6)];
    for (k, &end) in ends.iter().enumerate() {
        cuts.push(((frame_start(k) + end) / 2, k));
    }
    cuts.push((frame_start(4) + 40 + rng.random_range(0..ends[4] - frame_start(4) - 40), 4));

    let want = a.digest();
    for (t, &(cut, whole)) in cuts.iter().enumerate() {
        let b = Node::init(tmp.path(), &format!("cut-{t}"));
        b.trust(&a);
        let file = tmp.path().join(format!("cut-{t}.ssb"));
        std::fs::write(&file, &bytes[..cut]).expect("write");
        let r = b.import(&file);
        let what = format!("bundle cut at byte {cut} of {} ({whole} whole frames)", bytes.len());
        assert_eq!(r.code, Some(1), "{what}: an incomplete import exits 1: {}", r.describe());
        assert!(!r.panicked(), "{what}: {}", r.describe());
        assert!(r.stdout.contains("truncated"), "{what}: says truncated: {}", r.describe());
        assert!(
            has_line(&r.stdout, &format!("applied: {whole} batches")),
            "{what}: {}",
            r.describe()
        );
        assert!(
            r.stdout.contains(&format!("{} batches are missing", 6 - whole)),
            "{what}: {}",
            r.describe()
        );
        let s = b.status();
        assert_eq!(s["batches"].as_u64(), Some(whole as u64), "{what}: batches held");
        assert_eq!(seq_of(&s, &author), whole as u64, "{what}: vector");
        assert_eq!(patients_in(&s), sizes[..whole].iter().sum::<usize>() as u64, "{what}");
        assert_eq!(s["pending_batches"], json!(0), "{what}");

        let r = b.import(&bundle);
        assert_imported(&r, 6 - whole as u64, whole as u64);
        assert_eq!(b.digest(), want, "{what}: the full bundle completes the node");
    }
}

#[test]
fn a_bundle_cut_inside_its_prefix_is_not_called_foreign() {
    // A copy that stopped after the magic bytes (inside the 14-byte prefix of magic, version and
    // header length) is a damaged sitesync bundle, not "not a sitesync bundle (bad magic bytes)".
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("a_bundle_cut_inside_its_prefix_is_not_called_foreign");
    let a = Node::init(tmp.path(), "site-a");
    a.put("patient", &patient(&mut rng, 1));
    let bundle = tmp.path().join("a.ssb");
    a.export(&bundle, &[]);
    let bytes = std::fs::read(&bundle).expect("read");
    let mut problems = Vec::new();
    for cut in 8..14 {
        let file = tmp.path().join(format!("prefix-{cut}.ssb"));
        std::fs::write(&file, &bytes[..cut]).expect("write");
        let r = a.import(&file);
        let what = format!("bundle cut after {cut} bytes");
        problems.extend(error_problems(&what, &r, 1, &["prefix-"]));
        let damaged = ["truncated", "corrupt", "ends"].iter().any(|w| r.stderr.contains(w));
        if r.stderr.contains("bad magic") || !damaged {
            problems.push(format!("{what}: misleading message: {}", r.stderr.trim()));
        }
    }
    assert_no_problems(&problems);
}
