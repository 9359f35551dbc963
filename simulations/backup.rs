//! Backups and restores. A backup is a copy of a site's `store.redb` (taken between two
//! events, so never in the middle of a transaction). A restore crashes the site, waits until
//! nothing it sent is still on the way, and puts the copy back, either as a new file (sitesync
//! must notice and take a new incarnation at open) or over the old file in place, followed by
//! `sitesync reincarnate` as `docs/operating.md` prescribes. Writes that nobody holds after the
//! restore (the site's own since the backup, and others' it alone held) are lost by the
//! restore: the oracle forgets them.

use sitesync::node::STORE_FILE;

use crate::world::{Ev, MINUTE_MS, World};

impl World {
    pub fn backup(&mut self, site: usize) {
        let Some(node) = self.node(site) else { return };
        let Ok(vector) = node.store.vector() else { return };
        let author = node.store.author();
        let path = self.tmp.path().join(format!("backup-{}.redb", self.sites[site].name));
        if let Err(e) = std::fs::copy(self.sites[site].dir.join(STORE_FILE), &path) {
            self.fail(format!("backing up {}: {e}", self.sites[site].name));
            return;
        }
        let name = self.sites[site].name.clone();
        self.trace(b"backup", &[name.as_bytes()]);
        self.backups.insert(site, (path, vector, author));
    }

    /// Crashes the site now; the backup goes back in two minutes.
    pub fn restore(&mut self, site: usize, in_place: bool) {
        if !self.backups.contains_key(&site) || self.healed {
            return;
        }
        self.crash(site);
        let ev = Ev::Script(crate::scenario::Script::Install { site, in_place });
        self.after(2 * MINUTE_MS, ev);
    }

    pub fn install(&mut self, site: usize, in_place: bool) {
        let Some((path, snapshot, old)) = self.backups.get(&site).cloned() else { return };
        if self.alive(site) {
            return;
        }
        // What survives: what the backup holds, and what any other node holds (a crashed node
        // holds what it had committed).
        let others: Vec<sitesync::id::Vector> = (0..self.sites.len())
            .filter(|&s| s != site)
            .map(|s| match self.node(s).map(|n| n.store.vector()) {
                Some(Ok(v)) => v,
                _ => self.sites[s].last_vector.clone(),
            })
            .collect();
        let held = |a: &sitesync::id::AuthorId, seq: u64| {
            snapshot.get(a) >= seq || others.iter().any(|v| v.get(a) >= seq)
        };
        let lost = self.oracle.forget(held);
        self.lost_to_restore += lost;
        let store = self.sites[site].dir.join(STORE_FILE);
        let copied = if in_place {
            std::fs::copy(&path, &store).map(|_| ())
        } else {
            let tmp = self.sites[site].dir.join("store.redb.restoring");
            std::fs::copy(&path, &tmp).and_then(|_| std::fs::rename(&tmp, &store))
        };
        if let Err(e) = copied {
            self.fail(format!("restoring {}: {e}", self.sites[site].name));
            return;
        }
        self.restores += 1;
        let name = self.sites[site].name.clone();
        self.trace(b"restore", &[name.as_bytes(), &[u8::from(in_place)], &lost.to_le_bytes()]);
        self.sites[site].restored = true;
        self.sites[site].restore_count += 1;
        self.restart(site);
        let Some(node) = self.node(site) else { return };
        let reincarnated = if in_place {
            node.reincarnate("restored from a backup (simulated)").map(|_| ())
        } else {
            Ok(())
        };
        let author = node.store.author();
        if let Err(e) = reincarnated {
            self.fail(format!("{name}: reincarnate: {e}"));
        }
        if author == old {
            self.fail(format!("{name}: restored from a backup but still writes as {old}"));
        }
    }
}
