//! [`Cursor`]: where an incremental FHIR export or push stands, as text a script can keep.
//!
//! A cursor is a replication [`Vector`]: for each author, the last batch whose records were
//! exported. Every change to a record, local or received, travels in exactly one batch
//! (`store/tables.rs`, `batches-1`), and batches are numbered per author without gaps, so "the
//! records changed since the cursor" are the records named by the batches beyond it. The store
//! computes that set (`Store::fhir_changes`); this file only owns the text form.
//!
//! Text form: `c1.` then lowercase hex of `postcard(Vec<(AuthorId, seq)>)` followed by the first
//! 4 bytes of its blake3 hash, so a cursor cut short or mistyped is refused rather than read as
//! an older position.

use std::fmt;
use std::str::FromStr;

use crate::id::{AuthorId, Vector};

const PREFIX: &str = "c1.";
const CHECK_BYTES: usize = 4;
/// Longest cursor text accepted (about 2,000 authors).
pub const CURSOR_CHARS_MAX: usize = 200_000;

/// A position in this node's change history (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor(pub Vector);

/// A cursor that does not parse; the message names the value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("cursor {shown:?} is not a sitesync FHIR cursor: {reason}")]
pub struct CursorError {
    shown: String,
    reason: &'static str,
}

impl Cursor {
    /// The start: every record is "changed since" it.
    pub fn start() -> Cursor {
        Cursor(Vector::default())
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<(AuthorId, u64)> = self.0.0.iter().map(|(a, s)| (*a, *s)).collect();
        let mut bytes = postcard::to_stdvec(&entries).unwrap_or_default();
        let check = blake3::hash(&bytes);
        bytes.extend_from_slice(&check.as_bytes()[..CHECK_BYTES]);
        write!(f, "{PREFIX}{}", hex::encode(bytes))
    }
}

impl FromStr for Cursor {
    type Err = CursorError;
    fn from_str(s: &str) -> Result<Cursor, CursorError> {
        let shown: String = s.chars().take(40).collect();
        let shown = if s.chars().count() > 40 { format!("{shown}...") } else { shown };
        let bad = |reason| CursorError { shown: shown.clone(), reason };
        if s.len() > CURSOR_CHARS_MAX {
            return Err(bad("it is too long"));
        }
        let body = s.trim().strip_prefix(PREFIX).ok_or_else(|| {
            bad("it does not start with c1. (print one with `sitesync fhir export`)")
        })?;
        let bytes = hex::decode(body).map_err(|_| bad("it is not hex after c1."))?;
        if bytes.len() < CHECK_BYTES + 1 {
            return Err(bad("it is too short"));
        }
        let (data, check) = bytes.split_at(bytes.len() - CHECK_BYTES);
        if blake3::hash(data).as_bytes()[..CHECK_BYTES] != *check {
            return Err(bad("its checksum does not match (cut short or mistyped)"));
        }
        let entries: Vec<(AuthorId, u64)> =
            postcard::from_bytes(data).map_err(|_| bad("its content does not decode"))?;
        Ok(Cursor(Vector(entries.into_iter().collect())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{Incarnation, NodeId};

    #[test]
    fn round_trips_and_names_bad_values() {
        let mut v = Vector::default();
        v.0.insert(AuthorId { node: NodeId([3; 32]), incarnation: Incarnation(77) }, 12);
        v.0.insert(AuthorId { node: NodeId([9; 32]), incarnation: Incarnation(1) }, 3);
        let c = Cursor(v);
        let text = c.to_string();
        assert_eq!(text.parse::<Cursor>(), Ok(c));
        assert_eq!(Cursor::start().to_string().parse::<Cursor>(), Ok(Cursor::start()));
        let mut typo = text.clone().into_bytes();
        let last = typo.len() - 3;
        typo[last] = if typo[last] == b'0' { b'1' } else { b'0' };
        let typo = String::from_utf8(typo).expect("ascii");
        for bad in ["", "yesterday", "c1.zz", "c1.00", &text[..text.len() - 2], &typo] {
            let e = bad.parse::<Cursor>().expect_err(bad);
            assert!(e.to_string().contains(&bad.chars().take(40).collect::<String>()), "{e}");
        }
    }
}
