//! The node directory: what `init` writes (a private key, the config, an empty store), and one
//! clear error line when those files are broken.

use std::os::unix::fs::PermissionsExt;

use serde_json::json;

use crate::{Node, assert_no_problems, error_problems};

#[test]
fn init_creates_a_private_key_and_an_empty_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "clinic-a");
    let key = a.dir.join("node.key");
    let mode = std::fs::metadata(&key).expect("node.key exists").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "node.key must be readable by its owner only, got {mode:o}");
    assert!(a.dir.join("sitesync.toml").is_file() && a.dir.join("store.redb").is_file());
    assert_eq!(a.ok(&["id"]).trim(), a.id, "`id` prints the id `init` printed");
    let s = a.status();
    assert_eq!(s["node_id"], json!(a.id));
    assert_eq!(s["name"], json!("clinic-a"));
    assert_eq!((s["batches"].as_u64(), s["pending_batches"].as_u64()), (Some(0), Some(0)));
    assert_eq!(s["entities"], json!({}));
    let b = Node::init(tmp.path(), "clinic-b");
    assert_ne!(a.id, b.id, "every node gets its own key");
}

#[test]
fn broken_node_files_give_one_line_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::init(tmp.path(), "site-a");
    let config = a.dir.join("sitesync.toml");
    let key = a.dir.join("node.key");
    let config_text = std::fs::read(&config).expect("config");
    let key_text = std::fs::read(&key).expect("key");
    let mut problems = Vec::new();
    let mut check = |what: &str, needles: &[&str]| {
        problems.extend(error_problems(what, &a.run(&["status"]), 1, needles));
        std::fs::write(&config, &config_text).expect("restore config");
        std::fs::write(&key, &key_text).expect("restore key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    };

    std::fs::remove_file(&config).expect("rm config");
    check("missing config", &["sitesync.toml", "missing"]);
    std::fs::write(&config, "this is [not toml\n").expect("write");
    check("garbage config", &["sitesync.toml"]);
    std::fs::write(&config, "version = 1\ncolour = \"red\"\n[node]\nname = \"a\"\n")
        .expect("write");
    check("unknown config key", &["sitesync.toml", "colour"]);
    std::fs::write(&config, "version = 1\n[node]\nname = \"a\"\nnam = \"b\"\n").expect("write");
    check("unknown node key", &["sitesync.toml", "nam"]);
    std::fs::write(&config, "version = 7\n[node]\nname = \"a\"\n").expect("write");
    check("config version 7", &["sitesync.toml", "version 7"]);
    std::fs::write(&config, "version = 1\n[node]\nname = \"a\"\n[[trust]]\nnode_id = \"zz\"\n")
        .expect("write");
    check("bad trusted node id", &["sitesync.toml", "trust[0].node_id", "zz"]);

    std::fs::write(&key, "garbage\n").expect("write");
    check("garbage key file", &["node.key"]);
    std::fs::remove_file(&key).expect("rm key");
    check("missing key file", &["node.key", "missing"]);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    check("key file mode 0644", &["node.key", "readable by other users", "chmod 600"]);
    assert_no_problems(&problems);

    assert_eq!(a.ok(&["id"]).trim(), a.id, "the restored node works");
}
