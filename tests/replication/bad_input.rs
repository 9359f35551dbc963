//! Bad input: refused records, bad arguments and files that are not what they should be each
//! give one clear line on stderr and the intended exit code, never a panic, and write nothing.

use std::process::Stdio;

use rand::Rng;
use serde_json::{Value, json};

use crate::{Node, assert_no_problems, command, error_problems, p, patient, run, run_with};
use crate::{seeded, uuid, uuid_of};

#[test]
fn bad_records_are_refused_with_exit_code_2() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bad_records_are_refused_with_exit_code_2");
    let a = Node::init(tmp.path(), "site-a");
    let good = patient(&mut rng, 1);
    a.put("patient", &good);
    let before = a.status();
    let mut problems = Vec::new();

    let bad_json = tmp.path().join("bad.json");
    std::fs::write(&bad_json, "{\"uuid\": ").expect("write");
    problems.extend(error_problems(
        "malformed JSON file",
        &a.run(&["put", "patient", p(&bad_json)]),
        2,
        &["bad.json", "not valid JSON"],
    ));
    let mut c = command(Some(&a.dir));
    c.args(["put", "patient", "-"]);
    let r = run_with(c, Some(b"[{\"gender\": \"F\",]".to_vec()));
    problems.extend(error_problems("malformed JSON on stdin", &r, 2, &["not valid JSON"]));
    let missing = tmp.path().join("nope.json");
    problems.extend(error_problems(
        "missing input file",
        &a.run(&["put", "patient", p(&missing)]),
        2,
        &["nope.json"],
    ));

    let mut wrong = patient(&mut rng, 2);
    wrong["gender"] = json!(5);
    problems.extend(error_problems(
        "gender: 5",
        &a.put_run("patient", &wrong),
        2,
        &["gender", "5"],
    ));
    let mut wrong = patient(&mut rng, 3);
    wrong["names"] = json!("Amina Okello");
    problems.extend(error_problems(
        "names: a string",
        &a.put_run("patient", &wrong),
        2,
        &["names"],
    ));
    let mut wrong = patient(&mut rng, 4);
    wrong.as_object_mut().expect("object").remove("gender");
    problems.extend(error_problems(
        "no gender",
        &a.put_run("patient", &wrong),
        2,
        &["gender", "required"],
    ));
    let mut wrong = patient(&mut rng, 5);
    wrong["gendr"] = json!("F");
    problems.extend(error_problems("unknown field", &a.put_run("patient", &wrong), 2, &["gendr"]));
    let mut wrong = patient(&mut rng, 6);
    wrong["identifiers"][0]["uuid"] = json!("not-a-uuid");
    problems.extend(error_problems(
        "bad item uuid",
        &a.put_run("patient", &wrong),
        2,
        &["identifiers[0].uuid", "not-a-uuid"],
    ));
    // A list with one bad record: nothing of the list is written.
    let mut wrong = patient(&mut rng, 7);
    wrong["birthdate"] = json!(19900101);
    let list = json!([patient(&mut rng, 8), wrong, patient(&mut rng, 9)]);
    problems.extend(error_problems(
        "bad record 1 of 3",
        &a.put_run("patient", &list),
        2,
        &["record 1", "birthdate", "19900101"],
    ));

    problems.extend(error_problems(
        "put of an unknown type",
        &a.put_run("pateint", &good),
        2,
        &["pateint"],
    ));
    problems.extend(error_problems(
        "get of an unknown type",
        &a.run(&["get", "pateint", uuid_of(&good)]),
        2,
        &["pateint"],
    ));
    problems.extend(error_problems(
        "list of an unknown type",
        &a.run(&["list", "pateint"]),
        2,
        &["pateint"],
    ));
    assert_no_problems(&problems);

    let after = a.status();
    assert_eq!(after["digest"], before["digest"], "no refused put wrote anything");
    assert_eq!(after["batches"], before["batches"]);
    assert_eq!(a.list("patient"), vec![format!("patient/{}", uuid_of(&good))]);
}

#[test]
fn bad_arguments_and_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("bad_arguments_and_files_give_one_line_errors");
    let a = Node::init(tmp.path(), "site-a");
    let other = Node::init(tmp.path(), "site-b");
    a.put("patient", &patient(&mut rng, 1));
    let before = a.status();
    let mut problems = Vec::new();

    // No node directory.
    problems.extend(error_problems("no --dir", &run(None, &["status"]), 2, &["--dir"]));
    // init over an existing node refuses and keeps it.
    let r = run(None, &["init", "--dir", p(&a.dir), "--name", "again"]);
    problems.extend(error_problems("init over a node", &r, 1, &["site-a", "refusing"]));

    // Imports of files that are not bundles.
    let missing = tmp.path().join("missing.ssb");
    problems.extend(error_problems(
        "import of a missing file",
        &a.import(&missing),
        1,
        &["missing.ssb"],
    ));
    let empty = tmp.path().join("empty.ssb");
    std::fs::write(&empty, b"").expect("write");
    problems.extend(error_problems(
        "import of an empty file",
        &a.import(&empty),
        1,
        &["empty.ssb", "not a sitesync bundle"],
    ));
    for i in 0..4 {
        let file = tmp.path().join(format!("random-{i}.bin"));
        let len = [3usize, 100, 4096, 70_000][i];
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        std::fs::write(&file, &bytes).expect("write");
        problems.extend(error_problems(
            &format!("import of {len} random bytes"),
            &a.import(&file),
            1,
            &["random-", "not a sitesync bundle"],
        ));
        // The right magic and version, then random bytes (at least a whole prefix: see
        // `a_bundle_cut_inside_its_prefix_is_not_called_foreign` for shorter files).
        if len < 4 {
            continue;
        }
        let mut bytes = bytes;
        bytes.splice(0..0, b"SSBNDL\r\n\x01\x00".iter().copied());
        let file = tmp.path().join(format!("random-magic-{i}.bin"));
        std::fs::write(&file, &bytes).expect("write");
        problems.extend(error_problems(
            &format!("import of magic + {len} random bytes"),
            &a.import(&file),
            1,
            &["random-magic-", "corrupt"],
        ));
    }

    // trust add with bad ids.
    problems.extend(error_problems("trust add xyz", &a.run(&["trust", "add", "xyz"]), 2, &["xyz"]));
    let upper = other.id.to_uppercase();
    problems.extend(error_problems(
        "trust add UPPERCASE",
        &a.run(&["trust", "add", &upper]),
        2,
        &[upper.as_str()],
    ));
    problems.extend(error_problems(
        "trust add own id",
        &a.run(&["trust", "add", &a.id]),
        2,
        &["own id"],
    ));

    // get of records that are not there.
    let unknown = uuid(&mut rng);
    problems.extend(error_problems(
        "get unknown uuid",
        &a.run(&["get", "patient", &unknown]),
        1,
        &[unknown.as_str()],
    ));
    problems.extend(error_problems(
        "get malformed uuid",
        &a.run(&["get", "patient", "12345"]),
        2,
        &["12345"],
    ));

    // export --since with bad vector files writes no bundle.
    let out = tmp.path().join("never.ssb");
    let cases: [(&str, &str, &[&str]); 4] = [
        ("garbage.json", "this is not json", &["garbage.json", "not valid JSON"]),
        ("list.json", "[1, 2]", &["list.json", "not a JSON object"]),
        ("author.json", "{\"vector\": {\"abc\": 1}}", &["author.json", "abc"]),
        ("seq.json", "{\"vector\": {\"X:0000000000000001\": \"one\"}}", &["seq.json"]),
    ];
    for (name, text, needles) in cases {
        let file = tmp.path().join(name);
        let text = text.replace('X', &other.id);
        std::fs::write(&file, text).expect("write");
        let r = a.run(&["export", "--out", p(&out), "--since", p(&file)]);
        problems.extend(error_problems(&format!("export --since {name}"), &r, 2, needles));
    }
    let r = a.run(&["export", "--out", p(&out), "--since", p(&tmp.path().join("none.json"))]);
    problems.extend(error_problems("export --since a missing file", &r, 2, &["none.json"]));
    let r = a.run(&["export", "--out", p(&out), "--peer", &other.id]);
    problems.extend(error_problems("export --peer never seen", &r, 2, &[other.id.as_str()]));
    assert!(!out.exists(), "a refused export writes no bundle");
    assert_no_problems(&problems);

    assert_eq!(a.ok(&["id"]).trim(), a.id, "init did not overwrite the node");
    assert_eq!(a.status()["digest"], before["digest"]);
    assert!(a.ok(&["trust", "list"]).trim().is_empty(), "no bad id was trusted");
}

#[test]
fn a_closed_standard_output_does_not_panic() {
    // `sitesync list | head -1` closes the pipe early; the node must not print a panic.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut rng = seeded("a_closed_standard_output_does_not_panic");
    let a = Node::init(tmp.path(), "site-a");
    let list: Vec<Value> = (0..200).map(|n| patient(&mut rng, n)).collect();
    a.put("patient", &Value::Array(list));
    let mut c = command(Some(&a.dir));
    c.args(["list", "patient"]).stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = c.stderr(Stdio::piped()).spawn().expect("spawn");
    drop(child.stdout.take()); // the reader goes away before anything is printed
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "list into a closed pipe panicked:\n{stderr}");
}
