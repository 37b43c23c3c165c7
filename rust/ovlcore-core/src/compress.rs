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
    fn unsupported_compressions_are_named() {
        assert!(Compression::detect(b"BZh91AY").unwrap_err().to_string().contains("bzip2"));
        assert!(Compression::parse(Some("lz4")).is_err());
    }
}
