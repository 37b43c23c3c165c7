//! The records of a PAX extended header, read by their length prefix.
//!
//! A record is `"%d %s=%s\n"`, its decimal length counting the whole record (its own digits, the space
//! and the newline), so a value may hold any byte: newlines, NULs, a binary `security.capability`.
//! Splitting the data on newlines instead (as the `tar` crate does) breaks such records and can read
//! the tail of one value as a record of its own.

/// One record: key and value.
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// The records of an extended header's data, in order. The data must be exactly a sequence of
/// well-formed records; the error says what is wrong with the first one that is not.
pub fn records(mut data: &[u8]) -> Result<Vec<Record<'_>>, &'static str> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let space = data.iter().position(|b| *b == b' ').ok_or("a record has no length")?;
        let digits = &data[..space];
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err("a record's length is not a decimal number");
        }
        // Only digits: parsing fails on overflow alone, and such a length runs past any header.
        let len = std::str::from_utf8(digits).ok().and_then(|d| d.parse::<usize>().ok()).unwrap_or(usize::MAX);
        if len <= space {
            return Err("a record's length is shorter than its own prefix");
        }
        if len > data.len() {
            return Err("a record runs past the end of the header");
        }
        let (record, rest) = data.split_at(len);
        let body = record[space + 1..].strip_suffix(b"\n").ok_or("a record does not end with a newline")?;
        // The key ends at the first `=`, so it never holds one; the value may.
        let eq = body.iter().position(|b| *b == b'=').ok_or("a record has no `=`")?;
        if eq == 0 {
            return Err("a record has an empty key");
        }
        out.push((&body[..eq], &body[eq + 1..]));
        data = rest;
    }
    Ok(out)
}

/// The value of the last record with `key` (a later record overrides an earlier one).
pub fn last<'a>(records: &[Record<'a>], key: &[u8]) -> Option<&'a [u8]> {
    records.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_hold_any_byte() {
        let data = b"24 SCHILY.xattr.u.x=a\nb\n7 k=\n=\n13 path=a\x00\n\xff\n";
        let got = records(data).unwrap();
        assert_eq!(got, [(&b"SCHILY.xattr.u.x"[..], &b"a\nb"[..]), (b"k", b"\n="), (b"path", b"a\x00\n\xff")]);
        assert_eq!(records(b"").unwrap(), []);
    }

    #[test]
    fn a_newline_in_a_value_hides_no_record() {
        // Split on newlines, the value's tail would read as a `linkpath` record.
        let data = b"41 SCHILY.xattr.user.a=x\n15 linkpath=/e\n\n";
        let got = records(data).unwrap();
        assert_eq!(got, [(&b"SCHILY.xattr.user.a"[..], &b"x\n15 linkpath=/e\n"[..])]);
        assert_eq!(last(&got, b"linkpath"), None);
    }

    #[test]
    fn the_last_record_of_a_key_wins() {
        let got = records(b"9 path=a\n9 path=b\n").unwrap();
        assert_eq!(last(&got, b"path"), Some(&b"b"[..]));
    }

    #[test]
    fn malformed_records_are_refused() {
        let cases: &[(&[u8], &str)] = &[
            (b"path=a\n", "no length"),
            (b"x9 path=a\n", "not a decimal number"),
            (b"+9 path=a\n", "not a decimal number"),
            (b" path=a\n", "not a decimal number"),
            (b"-9 path=a\n", "not a decimal number"),
            (b"1 path=a\n", "shorter than its own prefix"),
            (b"2 path=a\n", "does not end with a newline"),
            (b"11 path=a\n", "runs past the end"),
            (b"99999999999999999999999 k=v\n", "runs past the end"),
            (b"9 path=a;", "does not end with a newline"),
            (b"8 patha\n", "no `=`"),
            (b"6 =ab\n", "empty key"),
            (b"9 path=a\n\0\0\0", "no length"),
            (b"9 path=a\n\n", "no length"),
        ];
        for (data, why) in cases {
            match records(data) {
                Ok(r) => panic!("{data:?} accepted as {r:?}"),
                Err(e) => assert!(e.contains(why), "{data:?}: {e:?} should say {why:?}"),
            }
        }
    }
}
