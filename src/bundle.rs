//! Bundle files: signed batches carried on a USB stick, with the same checks as the network.
//!
//! Format version 1 (all integers little-endian):
//!
//! ```text
//! magic        8 B   "SSBNDL\r\n"   (the CR LF catches text-mode copies)
//! version      2 B   1
//! header_len   4 B   <= HEADER_BYTES_MAX
//! header       postcard(Header)      exporter, time, exporter's vector, frame count and bytes
//! header_hash  32 B  blake3(header)
//! frames       `Header::frames` times:
//!   len        4 B   <= FRAME_BYTES_MAX
//!   payload    postcard(Frame)       one SignedBatch and its change bodies
//!   hash       32 B  blake3(payload)
//! trailer      8 B   "SSBEND\r\n"
//! file_hash    32 B  blake3 of every byte before the trailer
//! ```
//!
//! The header declares the size of the frame section, so a reader tells a truncated file (shorter
//! than declared: the whole frames before the cut are usable) from a corrupted one (right size
//! but a hash fails: nothing is used). Batches inside stay signed by their authors, so a bundle
//! needs no signature of its own. Reading never panics on any input.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::batch::SignedBatch;
use crate::id::{NodeId, Vector};

pub const BUNDLE_MAGIC: [u8; 8] = *b"SSBNDL\r\n";
pub const TRAILER_MAGIC: [u8; 8] = *b"SSBEND\r\n";
/// The bundle format this build writes and reads.
pub const BUNDLE_VERSION: u16 = 1;
/// Largest header accepted, in bytes (a vector of ~200k authors).
pub const HEADER_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Largest frame (one batch with its bodies) accepted, in bytes.
pub const FRAME_BYTES_MAX: u32 = 128 * 1024 * 1024;

const PREFIX_BYTES: u64 = 8 + 2 + 4;
const TRAILER_BYTES: u64 = 8 + 32;

/// What the bundle says about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The node that wrote the bundle.
    pub exporter: NodeId,
    /// Seconds since the Unix epoch when it was written.
    pub created: i64,
    /// What the exporter held when it wrote the bundle (the importer learns it).
    pub vector: Vector,
    /// Number of frames.
    pub frames: u64,
    /// Bytes of the frame section.
    pub frame_bytes: u64,
}

/// One batch with its change bodies.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Frame {
    batch: SignedBatch,
    bodies: Vec<ByteBuf>,
}

/// Why a bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: not a sitesync bundle (bad magic bytes)")]
    Magic(PathBuf),
    #[error(
        "{path}: bundle format version {found} is not supported (this sitesync reads version {BUNDLE_VERSION})"
    )]
    Version { path: PathBuf, found: u16 },
    #[error("{path}: bundle is corrupt at byte {offset}: {what}; nothing was applied")]
    Corrupt { path: PathBuf, offset: u64, what: String },
}

/// The result of checking a whole bundle file before anything is applied.
#[derive(Clone, Debug)]
pub struct Scan {
    pub header: Header,
    /// Frames that are whole and pass their hash, from the start.
    pub usable_frames: u64,
    /// `Some((file_bytes, declared_bytes))` when the file ends before the declared end.
    pub truncated: Option<(u64, u64)>,
    frames_start: u64,
}

/// Writes a bundle atomically: frames go to a temporary file beside the output, and the final
/// file appears (renamed into place) only when it is complete and synced.
pub struct BundleWriter {
    out: PathBuf,
    frames: BufWriter<tempfile::NamedTempFile>,
    count: u64,
    bytes: u64,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.to_path_buf(), source }
}

impl BundleWriter {
    pub fn create(out: &Path) -> Result<Self, BundleError> {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(out))?;
        Ok(BundleWriter { out: out.to_path_buf(), frames: BufWriter::new(tmp), count: 0, bytes: 0 })
    }

    /// Appends one batch and its bodies; returns the frame's size in bytes.
    pub fn push(&mut self, batch: SignedBatch, bodies: Vec<Vec<u8>>) -> Result<u64, BundleError> {
        let frame = Frame { batch, bodies: bodies.into_iter().map(ByteBuf::from).collect() };
        let payload = postcard::to_stdvec(&frame).unwrap_or_default();
        let len = u32::try_from(payload.len()).ok().filter(|l| *l <= FRAME_BYTES_MAX).ok_or_else(
            || BundleError::Io {
                path: self.out.clone(),
                source: io::Error::other(format!(
                    "a batch of {} bytes exceeds the frame limit",
                    payload.len()
                )),
            },
        )?;
        let w = &mut self.frames;
        let err = io_err(&self.out);
        w.write_all(&len.to_le_bytes()).map_err(&err)?;
        w.write_all(&payload).map_err(&err)?;
        w.write_all(blake3::hash(&payload).as_bytes()).map_err(&err)?;
        let size = 4 + payload.len() as u64 + 32;
        self.count += 1;
        self.bytes += size;
        Ok(size)
    }

    /// Writes header, frames and trailer to the output path; returns the file size.
    pub fn finish(
        self,
        exporter: NodeId,
        created: i64,
        vector: Vector,
    ) -> Result<u64, BundleError> {
        let err = io_err(&self.out);
        let mut frames = self.frames.into_inner().map_err(|e| err(e.into_error()))?;
        frames.as_file_mut().seek(SeekFrom::Start(0)).map_err(&err)?;
        let header =
            Header { exporter, created, vector, frames: self.count, frame_bytes: self.bytes };
        let header = postcard::to_stdvec(&header).unwrap_or_default();
        let dir = self.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let final_tmp = tempfile::NamedTempFile::new_in(dir).map_err(&err)?;
        let mut w =
            HashingWriter { inner: BufWriter::new(final_tmp), hasher: blake3::Hasher::new() };
        w.write_all(&BUNDLE_MAGIC).map_err(&err)?;
        w.write_all(&BUNDLE_VERSION.to_le_bytes()).map_err(&err)?;
        w.write_all(&(header.len() as u32).to_le_bytes()).map_err(&err)?;
        w.write_all(&header).map_err(&err)?;
        w.write_all(blake3::hash(&header).as_bytes()).map_err(&err)?;
        io::copy(frames.as_file_mut(), &mut w).map_err(&err)?;
        let file_hash = w.hasher.finalize();
        let mut inner = w.inner;
        inner.write_all(&TRAILER_MAGIC).map_err(&err)?;
        inner.write_all(file_hash.as_bytes()).map_err(&err)?;
        let done = inner.into_inner().map_err(|e| err(e.into_error()))?;
        done.as_file().sync_all().map_err(&err)?;
        let size = done.as_file().metadata().map_err(&err)?.len();
        done.persist(&self.out).map_err(|e| err(e.error))?;
        Ok(size)
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct Cursor {
    path: PathBuf,
    r: BufReader<File>,
    offset: u64,
    hasher: blake3::Hasher,
}

enum Read_ {
    Done(Vec<u8>),
    Eof,
}

impl Cursor {
    fn corrupt(&self, what: impl Into<String>) -> BundleError {
        BundleError::Corrupt { path: self.path.clone(), offset: self.offset, what: what.into() }
    }

    /// Reads exactly `n` bytes, or reports end of file if fewer remain.
    fn take(&mut self, n: u64) -> Result<Read_, BundleError> {
        let mut buf = Vec::with_capacity(n.min(1 << 20) as usize);
        let got = (&mut self.r).take(n).read_to_end(&mut buf).map_err(io_err(&self.path))?;
        if (got as u64) < n {
            return Ok(Read_::Eof);
        }
        self.hasher.update(&buf);
        self.offset += n;
        Ok(Read_::Done(buf))
    }
}

/// Checks the whole file: magic, version, header, every frame's length and hash, and the file
/// hash. A corrupted bundle is an error (apply nothing); a truncated one reports the usable
/// frames before the cut.
pub fn scan(path: &Path) -> Result<Scan, BundleError> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut c = Cursor {
        path: path.to_path_buf(),
        r: BufReader::with_capacity(1 << 20, file),
        offset: 0,
        hasher: blake3::Hasher::new(),
    };
    let Read_::Done(prefix) = c.take(PREFIX_BYTES)? else {
        // Shorter than the fixed prefix: a cut bundle if what is there starts like one.
        let mut start = Vec::new();
        File::open(path).and_then(|f| f.take(8).read_to_end(&mut start)).map_err(io_err(path))?;
        if !start.is_empty() && BUNDLE_MAGIC.starts_with(&start) {
            let what =
                format!("the file ends after {file_len} bytes, inside the header (truncated)");
            return Err(BundleError::Corrupt { path: path.into(), offset: file_len, what });
        }
        return Err(BundleError::Magic(path.into()));
    };
    if prefix[..8] != BUNDLE_MAGIC {
        return Err(BundleError::Magic(path.into()));
    }
    let version = u16::from_le_bytes([prefix[8], prefix[9]]);
    if version != BUNDLE_VERSION {
        return Err(BundleError::Version { path: path.into(), found: version });
    }
    let header_len = u32::from_le_bytes([prefix[10], prefix[11], prefix[12], prefix[13]]);
    if header_len > HEADER_BYTES_MAX {
        return Err(c.corrupt(format!("header length {header_len} exceeds {HEADER_BYTES_MAX}")));
    }
    let Read_::Done(header_bytes) = c.take(u64::from(header_len) + 32)? else {
        return Err(c.corrupt("the file ends inside the header"));
    };
    let (header_bytes, header_hash) = header_bytes.split_at(header_len as usize);
    if blake3::hash(header_bytes).as_bytes() != header_hash {
        return Err(c.corrupt("the header fails its checksum"));
    }
    let header: Header =
        postcard::from_bytes(header_bytes).map_err(|e| c.corrupt(format!("header: {e}")))?;
    let frames_start = c.offset;
    let declared = frames_start + header.frame_bytes + TRAILER_BYTES;
    if file_len > declared {
        return Err(c.corrupt(format!("{} bytes follow the declared end", file_len - declared)));
    }
    let complete = file_len == declared;
    let mut usable = 0;
    while usable < header.frames {
        let frame_at = c.offset;
        match read_frame(&mut c)? {
            Some(Ok(_)) => usable += 1,
            Some(Err(what)) if complete => {
                return Err(BundleError::Corrupt {
                    path: path.into(),
                    offset: frame_at,
                    what: format!("frame {usable}: {what}"),
                });
            }
            Some(Err(_)) | None if !complete => break,
            _ => return Err(c.corrupt(format!("frame {usable} is incomplete in a full-size file"))),
        }
    }
    if complete {
        if c.offset != frames_start + header.frame_bytes {
            return Err(c.corrupt("the frames do not fill the declared frame section"));
        }
        let expected = c.hasher.finalize();
        let Read_::Done(trailer) = c.take(TRAILER_BYTES)? else {
            return Err(c.corrupt("the file ends inside the trailer"));
        };
        if trailer[..8] != TRAILER_MAGIC || trailer[8..] != *expected.as_bytes() {
            return Err(c.corrupt("the file checksum does not match"));
        }
    }
    let truncated = (!complete).then_some((file_len, declared));
    Ok(Scan { header, usable_frames: usable, truncated, frames_start })
}

/// Reads one frame: `None` at end of file, `Some(Err)` if its length or hash is wrong.
fn read_frame(c: &mut Cursor) -> Result<Option<Result<Vec<u8>, String>>, BundleError> {
    let Read_::Done(len) = c.take(4)? else { return Ok(None) };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]);
    if len > FRAME_BYTES_MAX {
        return Ok(Some(Err(format!("length {len} exceeds {FRAME_BYTES_MAX}"))));
    }
    let Read_::Done(body) = c.take(u64::from(len) + 32)? else { return Ok(None) };
    let (payload, hash) = body.split_at(len as usize);
    if blake3::hash(payload).as_bytes() != hash {
        return Ok(Some(Err("its checksum does not match".into())));
    }
    Ok(Some(Ok(body[..len as usize].to_vec())))
}

/// One decoded frame (a batch and its bodies), or why it does not decode.
pub type FrameItem = Result<(SignedBatch, Vec<Vec<u8>>), String>;

/// Iterates the usable frames of a scanned bundle, decoded. A frame that passed its hash but
/// does not decode yields `Err(reason)` for that frame only.
pub fn frames(path: &Path, scan: &Scan) -> Result<impl Iterator<Item = FrameItem>, BundleError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    file.seek(SeekFrom::Start(scan.frames_start)).map_err(io_err(path))?;
    let mut c = Cursor {
        path: path.to_path_buf(),
        r: BufReader::with_capacity(1 << 20, file),
        offset: scan.frames_start,
        hasher: blake3::Hasher::new(),
    };
    let mut left = scan.usable_frames;
    Ok(std::iter::from_fn(move || {
        if left == 0 {
            return None;
        }
        left -= 1;
        let payload = match read_frame(&mut c) {
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => return Some(Err(e)),
            Ok(None) => return Some(Err("the file changed while it was read".into())),
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(match postcard::from_bytes::<Frame>(&payload) {
            Ok(f) => Ok((f.batch, f.bodies.into_iter().map(ByteBuf::into_vec).collect())),
            Err(e) => Err(format!("frame is not a batch: {e}")),
        })
    }))
}
