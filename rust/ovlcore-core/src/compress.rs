//! Compression of layer streams: detection by magic bytes, decoding of gzip, zstd, bzip2 and xz, encoding
//! of gzip and zstd (the two an image may be pushed with; bzip2 and xz are only ever read, as Docker does).

use std::io::{self, BufReader, Read, Write};

use crate::error::{Error, Result};
use crate::overlap::fill;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn parse(name: Option<&str>) -> Result<Compression> {
        match name {
            None | Some("none") | Some("") => Ok(Compression::None),
            Some("gzip") | Some("gz") => Ok(Compression::Gzip),
            Some("zstd") | Some("zst") => Ok(Compression::Zstd),
            Some(other) => Err(Error::Invalid(format!("unknown compression {other:?} (use None, 'gzip' or 'zstd')"))),
        }
    }

    /// The name [`Compression::parse`] takes (`None` for plain).
    pub fn name(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gzip"),
            Compression::Zstd => Some("zstd"),
        }
    }

}

/// What a stream is, as its first bytes tell: plain, one of the [`Compression`]s, or one that is only
/// ever read (local `ADD` archives and docker-archive layers may be bzip2 or xz, as Docker accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

impl Format {
    pub fn detect(head: &[u8]) -> Format {
        match head {
            [0x1f, 0x8b, ..] => Format::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Format::Zstd,
            [b'B', b'Z', b'h', ..] => Format::Bzip2,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Format::Xz,
            _ => Format::Plain,
        }
    }
}

impl From<Compression> for Format {
    fn from(c: Compression) -> Format {
        match c {
            Compression::None => Format::Plain,
            Compression::Gzip => Format::Gzip,
            Compression::Zstd => Format::Zstd,
        }
    }
}

/// A reader of the decompressed bytes of `input`, whatever its (supported) compression.
pub fn decompressed<'a, R: Read + 'a>(mut input: R) -> Result<Box<dyn Read + 'a>> {
    // Pipes and sockets may hand out a byte at a time: read until the magic numbers are known.
    let mut head = Vec::with_capacity(6);
    let mut buf = [0u8; 6];
    while head.len() < 6 {
        match input.read(&mut buf[..6 - head.len()]) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let kind = Format::detect(&head);
    let buffered = BufReader::with_capacity(1 << 20, io::Cursor::new(head).chain(input));
    Ok(match kind {
        Format::Plain => Box::new(buffered),
        Format::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Format::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
        // Multi-stream, as bzip2 -d and xz -d read concatenated files (pbzip2 and xz -T write them).
        Format::Bzip2 => Box::new(Named("bzip2", bzip2::bufread::MultiBzDecoder::new(buffered))),
        Format::Xz => Box::new(Named("xz", liblzma::bufread::XzDecoder::new_multi_decoder(buffered))),
    })
}

/// A decoder whose errors name its compression ("lzma data error" alone does not say what was read).
struct Named<R>(&'static str, R);

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.1.read(buf).map_err(|e| io::Error::new(e.kind(), format!("{} stream: {e}", self.0)))
    }
}

/// A writer that compresses into `out`. Call [`Encoder::finish`] to flush the trailer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// An encoder whose zstd compresses on `threads` worker threads. zstd always runs in its
    /// multi-threaded mode (at least one worker), whose bytes do not depend on the number of workers: a
    /// blob's digest is then the same on every machine and however many layers are compressed at once.
    pub fn with_threads(out: W, c: Compression, threads: u32) -> Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::fast())),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, 3)?;
                e.multithread(threads.max(1))?;
                Encoder::Zstd(e)
            }
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }

    pub fn get_mut(&mut self) -> &mut W {
        match self {
            Encoder::None(w) => w,
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

/// Threads for each of `streams` streams compressed at the same time: the cores shared out, at least one.
pub fn threads_per_stream(streams: usize) -> u32 {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    (cores / streams.max(1)).max(1) as u32
}

/// A reader handing out the compressed form of what it reads from `inner`: produced as it is read, in
/// bounded memory. gzip is made in parallel on rayon's shared pool (one pool for all the layers being
/// compressed, so never more threads than cores), as independent gzip members of fixed-size pieces
/// (valid gzip, as pigz --independent makes it; the bytes depend only on the input); zstd uses its own
/// worker threads. Buffers are kept and reused from one stretch to the next: allocating them anew on
/// short-lived threads left each thread's malloc arena holding tens of MB.
pub struct Compressor<R> {
    inner: R,
    kind: Compression,
    zstd: Option<Encoder<Vec<u8>>>,
    /// gzip: the input of each parallel task and the members it made
    ins: Vec<Vec<u8>>,
    outs: Vec<Vec<u8>>,
    input: Vec<u8>,
    out: Vec<u8>,
    pos: usize,
    done: bool,
}

/// Input per parallel gzip task, in members of `GZIP_PIECE` bytes (a multiple of it, so the members and
/// the bytes do not depend on the number of threads): big enough that splitting costs almost nothing in
/// size (deflate's window is 32 KiB anyway).
const GZIP_CHUNK: usize = 1 << 20;
const GZIP_PIECE: usize = 128 << 10;
const GZIP_SAMPLE: usize = 16 << 10;
/// zstd input per write, and the size of its multi-threaded jobs (its default at level 3 is 8 MiB per
/// job, several jobs buffered per worker: over 100 MB for two layers at once).
const ZSTD_INPUT: usize = 1 << 20;
const ZSTD_JOB: u32 = 1 << 20;

/// Whether a member is made at the fast level rather than stored: not when a sample of it does not
/// compress (random or already compressed data, where deflate spends its time for nothing). Depends
/// only on the bytes. `fast` is a fast deflate state, reset here.
fn worth_deflating(fast: &mut flate2::Compress, scratch: &mut Vec<u8>, piece: &[u8]) -> bool {
    let sample = &piece[..piece.len().min(GZIP_SAMPLE)];
    scratch.clear();
    scratch.reserve(sample.len() + 64);
    fast.reset();
    fast.compress_vec(sample, scratch, flate2::FlushCompress::Finish).is_ok()
        && (scratch.len() as f64) < sample.len() as f64 * 0.97
}

/// The header flate2's `GzEncoder` writes at levels 0 and 1: no name, mtime 0, XFL 4 (fastest), OS
/// unknown; with its trailer the member is byte for byte the one `GzEncoder` makes.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255];

/// Output space deflate is given per call, as flate2's `GzEncoder` gives it: stored blocks are cut to
/// the space there is, so members made with the same space are the bytes earlier releases pushed.
const DEFLATE_WINDOW: usize = 32 << 10;

/// One gzip member of `piece` made by `deflate` (reset here), appended to `out`, called as `GzEncoder`
/// calls deflate: all the input without flushing, then an (empty) final block.
fn gzip_member(deflate: &mut flate2::Compress, piece: &[u8], window: &mut Vec<u8>, out: &mut Vec<u8>) -> io::Result<()> {
    out.extend_from_slice(&GZIP_HEADER);
    deflate.reset();
    let mut rest = piece;
    let mut finished = false;
    while !finished {
        window.resize(DEFLATE_WINDOW, 0);
        let (before_in, before_out) = (deflate.total_in(), deflate.total_out());
        let flush = if rest.is_empty() { flate2::FlushCompress::Finish } else { flate2::FlushCompress::None };
        let status = deflate.compress(rest, window, flush)?;
        out.extend_from_slice(&window[..(deflate.total_out() - before_out) as usize]);
        rest = &rest[(deflate.total_in() - before_in) as usize..];
        finished = status == flate2::Status::StreamEnd;
    }
    let mut crc = flate2::Crc::new();
    crc.update(piece);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&(piece.len() as u32).to_le_bytes());
    Ok(())
}

/// A thread's deflate states (one per level, so that neither ever changes level) and buffers, kept
/// from member to member: a new state per 128 KiB member (two, with the sample's) cost its allocation
/// and the clearing of all its tables.
struct MemberMaker {
    fast: flate2::Compress,
    stored: flate2::Compress,
    sample: Vec<u8>,
    window: Vec<u8>,
}

thread_local! {
    static MEMBER_MAKER: std::cell::RefCell<MemberMaker> = std::cell::RefCell::new(MemberMaker {
        fast: flate2::Compress::new(flate2::Compression::fast(), false),
        stored: flate2::Compress::new(flate2::Compression::none(), false),
        sample: Vec::new(),
        window: Vec::new(),
    });
}

/// gzip members of `chunk`, one per `GZIP_PIECE`, into `out` (cleared first).
fn gzip_members(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    MEMBER_MAKER.with_borrow_mut(|m| {
        for piece in chunk.chunks(GZIP_PIECE) {
            let deflate = if worth_deflating(&mut m.fast, &mut m.sample, piece) { &mut m.fast } else { &mut m.stored };
            gzip_member(deflate, piece, &mut m.window, out)?;
        }
        Ok(())
    })
}

impl<R: Read> Compressor<R> {
    /// A compressor using every core.
    pub fn new(inner: R, kind: Compression) -> Result<Self> {
        Self::with_threads(inner, kind, threads_per_stream(1))
    }

    /// A compressor whose zstd uses `threads` workers: its share of the cores when several streams are
    /// compressed at once (zstd buffers a few jobs per worker, so its memory grows with workers ×
    /// streams; the bytes made do not depend on `threads`). gzip's tasks always go to rayon's one pool,
    /// which every stream shares: a stream left alone at the end of a push gets every core.
    pub fn with_threads(inner: R, kind: Compression, threads: u32) -> Result<Self> {
        let zstd = if kind == Compression::Zstd {
            let mut e = Encoder::with_threads(Vec::new(), kind, threads)?;
            if let Encoder::Zstd(z) = &mut e {
                z.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
            }
            Some(e)
        } else {
            None
        };
        let (ins, outs, input, out) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        Ok(Compressor { inner, kind, zstd, ins, outs, input, out, pos: 0, done: false })
    }

    /// Compress the next stretch of input into `self.out`.
    fn refill(&mut self) -> io::Result<()> {
        self.out.clear();
        self.pos = 0;
        match self.kind {
            Compression::None => {
                self.done = fill(&mut self.inner, &mut self.out, 1 << 20)? == 0;
            }
            Compression::Gzip => {
                use rayon::prelude::*;
                let tasks = rayon::current_num_threads().max(1);
                self.ins.resize_with(tasks, Vec::new);
                self.outs.resize_with(tasks, Vec::new);
                let mut n = 0;
                for buf in self.ins.iter_mut() {
                    let got = fill(&mut self.inner, buf, GZIP_CHUNK)?;
                    n += (got > 0) as usize;
                    if got < GZIP_CHUNK {
                        break;
                    }
                }
                if n == 0 {
                    self.done = true;
                    return Ok(());
                }
                let made: Vec<io::Result<()>> =
                    self.ins[..n].par_iter().zip(self.outs[..n].par_iter_mut()).map(|(c, out)| gzip_members(c, out)).collect();
                for (r, m) in made.into_iter().zip(&self.outs[..n]) {
                    r?;
                    self.out.extend_from_slice(m);
                }
            }
            Compression::Zstd => {
                let got = fill(&mut self.inner, &mut self.input, ZSTD_INPUT)?;
                let enc = self.zstd.as_mut().expect("made for zstd");
                if got == 0 {
                    self.out = self.zstd.take().expect("made for zstd").finish()?;
                    self.done = true;
                } else {
                    enc.write_all(&self.input)?;
                    // The encoder's output buffer and ours trade places: neither is allocated again.
                    std::mem::swap(&mut self.out, enc.get_mut());
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for Compressor<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            self.refill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: Compression) {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut e = Encoder::with_threads(Vec::new(), c, 2).unwrap();
        e.write_all(&data).unwrap();
        let packed = e.finish().unwrap();
        assert_eq!(Format::detect(&packed), Format::from(c));
        let mut out = Vec::new();
        decompressed(&packed[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn all_compressions_round_trip() {
        round_trip(Compression::None);
        round_trip(Compression::Gzip);
        round_trip(Compression::Zstd);
    }

    #[test]
    fn the_pull_compressor_round_trips_and_is_deterministic() {
        let data: Vec<u8> = (0..(9 << 20) as u32).map(|i| (i % 253) as u8 ^ (i >> 16) as u8).collect();
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut a = Vec::new();
            Compressor::new(&data[..], c).unwrap().read_to_end(&mut a).unwrap();
            let mut b = Vec::new();
            Compressor::new(&data[..], c).unwrap().read_to_end(&mut b).unwrap();
            assert_eq!(a, b, "{c:?} output must not vary");
            let mut out = Vec::new();
            decompressed(&a[..]).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, data, "{c:?}");
        }
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_the_number_of_threads() {
        // A pushed blob's digest must be the same on every machine (a second push finds it).
        let data: Vec<u8> = (0..(5 << 20) as u32 + 777).map(|i| (i % 241) as u8 ^ (i >> 12) as u8).collect();
        let with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let mut out = Vec::new();
                Compressor::new(&data[..], Compression::Gzip).unwrap().read_to_end(&mut out).unwrap();
                out
            })
        };
        let one = with(1);
        assert_eq!(one, with(3));
        let mut back = Vec::new();
        decompressed(&one[..]).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn a_gzip_member_is_what_gzencoder_makes_whatever_the_state_did_before() {
        // The bytes of pushed blobs stay those of earlier releases (a second push finds them): one
        // deflate state, reused across members and levels, makes what a new GzEncoder does.
        let text: Vec<u8> = (0..GZIP_PIECE as u32 * 3).map(|i| b"layer tar bytes "[(i % 16) as usize] ^ (i >> 13) as u8).collect();
        // Many incompressible pieces: each sample leaves the fast state mid-stream before its reset.
        let mut random = vec![0u8; GZIP_PIECE * 64 + 1000];
        let mut x = 0x9e3779b97f4a7c15u64;
        for b in random.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let zeros = vec![0u8; GZIP_PIECE + 5];
        let chunk: Vec<u8> = [&text[..], &random[..], &zeros[..], &text[..1000], b""].concat();
        for chunk in [&chunk[..], &random[..GZIP_PIECE - 1], &text[..17], b""] {
            let mut ours = Vec::new();
            gzip_members(chunk, &mut ours).unwrap();
            let mut theirs = Vec::new();
            for piece in chunk.chunks(GZIP_PIECE) {
                let level = {
                    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
                    let mut out = Vec::with_capacity(piece.len().min(GZIP_SAMPLE) + 64);
                    let packed = c.compress_vec(&piece[..piece.len().min(GZIP_SAMPLE)], &mut out, flate2::FlushCompress::Finish).is_ok()
                        && (out.len() as f64) < piece.len().min(GZIP_SAMPLE) as f64 * 0.97;
                    if packed { flate2::Compression::fast() } else { flate2::Compression::none() }
                };
                let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                e.write_all(piece).unwrap();
                theirs.extend(e.finish().unwrap());
            }
            assert_eq!(ours, theirs, "{} bytes", chunk.len());
        }
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_the_number_of_workers() {
        // Pushing a layer alone or beside others (fewer workers each) must make the same blob.
        let data: Vec<u8> = (0..(5 << 20) as u32 + 333).map(|i| (i % 239) as u8 ^ (i >> 13) as u8).collect();
        let with = |threads: u32| {
            let mut out = Vec::new();
            Compressor::with_threads(&data[..], Compression::Zstd, threads).unwrap().read_to_end(&mut out).unwrap();
            out
        };
        let one = with(1);
        assert_eq!(one, with(2));
        assert_eq!(one, with(3));
        let mut back = Vec::new();
        decompressed(&one[..]).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back, data);
    }

    fn bzip2(data: &[u8]) -> Vec<u8> {
        let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn unpacked(packed: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        decompressed(packed)?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn bzip2_and_xz_are_detected_and_read_whole_even_when_concatenated() {
        let a: Vec<u8> = (0..300_000u32).map(|i| (i % 249) as u8 ^ (i >> 10) as u8).collect();
        let b = b"second stream".to_vec();
        for (name, pack, format) in [("bzip2", bzip2 as fn(&[u8]) -> Vec<u8>, Format::Bzip2), ("xz", xz, Format::Xz)] {
            let one = pack(&a);
            assert_eq!(Format::detect(&one), format);
            assert_eq!(unpacked(&one).unwrap(), a, "{name}");
            // Parallel compressors (pbzip2, pixz, xz -T) write several streams one after the other.
            let two = [pack(&a), pack(&b)].concat();
            assert_eq!(unpacked(&two).unwrap(), [a.clone(), b.clone()].concat(), "{name}");
            // A cut-off stream is an error, never a silently short file.
            assert!(unpacked(&one[..one.len() / 2]).is_err(), "{name} truncated");
        }
    }

    #[test]
    fn only_gzip_and_zstd_are_written() {
        assert!(Compression::parse(Some("xz")).is_err());
        assert!(Compression::parse(Some("bzip2")).is_err());
        assert!(Compression::parse(Some("lz4")).is_err());
    }
}
