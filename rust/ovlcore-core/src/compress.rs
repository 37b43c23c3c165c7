//! Compression of layer streams: detection by magic bytes, decoding and encoding of gzip and zstd.

use std::io::{self, BufReader, Read, Write};

use crate::error::{Error, Result};

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

    /// Identify the compression of a stream from its first bytes.
    pub fn detect(head: &[u8]) -> Result<Compression> {
        Ok(match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [b'B', b'Z', b'h', ..] => return Err(Error::archive("bzip2 compression is not supported (use gzip or zstd)")),
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
                return Err(Error::archive("xz compression is not supported (use gzip or zstd)"))
            }
            _ => Compression::None,
        })
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
    let kind = Compression::detect(&head)?;
    let buffered = BufReader::with_capacity(1 << 20, io::Cursor::new(head).chain(input));
    Ok(match kind {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?),
    })
}

/// A writer that compresses into `out`. Call [`Encoder::finish`] to flush the trailer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W, c: Compression) -> Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(out),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(out, flate2::Compression::fast())),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, 3)?;
                let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
                if threads > 1 {
                    e.multithread(threads)?;
                }
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

/// The level for one member: stored when a sample of it does not compress (random or already
/// compressed data, where deflate spends its time for nothing), else fast. Depends only on the bytes.
fn gzip_level(piece: &[u8]) -> flate2::Compression {
    let sample = &piece[..piece.len().min(GZIP_SAMPLE)];
    let mut c = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(sample.len() + 64);
    let packed = c.compress_vec(sample, &mut out, flate2::FlushCompress::Finish).is_ok() && (out.len() as f64) < sample.len() as f64 * 0.97;
    if packed {
        flate2::Compression::fast()
    } else {
        flate2::Compression::none()
    }
}

/// gzip members of `chunk`, one per `GZIP_PIECE`, into `out` (cleared first).
fn gzip_members(chunk: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    for piece in chunk.chunks(GZIP_PIECE) {
        let mut e = flate2::write::GzEncoder::new(std::mem::take(out), gzip_level(piece));
        e.write_all(piece)?;
        *out = e.finish()?;
    }
    Ok(())
}

/// Fill `buf` with up to `len` bytes of `r` (less only at its end), reusing its allocation.
fn fill<R: Read>(r: &mut R, buf: &mut Vec<u8>, len: usize) -> io::Result<usize> {
    buf.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(filled)
}

impl<R: Read> Compressor<R> {
    pub fn new(inner: R, kind: Compression) -> Result<Self> {
        let zstd = if kind == Compression::Zstd {
            let mut e = Encoder::new(Vec::new(), kind)?;
            if let Encoder::Zstd(z) = &mut e {
                if std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) > 1 {
                    z.set_parameter(zstd::stream::raw::CParameter::JobSize(ZSTD_JOB))?;
                }
            }
            Some(e)
        } else {
            None
        };
        Ok(Compressor { inner, kind, zstd, ins: Vec::new(), outs: Vec::new(), input: Vec::new(), out: Vec::new(), pos: 0, done: false })
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
        let mut e = Encoder::new(Vec::new(), c).unwrap();
        e.write_all(&data).unwrap();
        let packed = e.finish().unwrap();
        assert_eq!(Compression::detect(&packed).unwrap(), c);
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
    fn unsupported_compressions_are_named() {
        assert!(Compression::detect(b"BZh91AY").unwrap_err().to_string().contains("bzip2"));
        assert!(Compression::parse(Some("lz4")).is_err());
    }
}
