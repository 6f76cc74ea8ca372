//! HPACK decoding (RFC 7541) for one direction of one connection: the static table, a
//! dynamic table bounded by the agent (never by the peer), and the four field
//! representations. Huffman-coded strings go through `httlib-huffman`'s table-driven
//! decoder (five bits a step).
//!
//! Decoding is strict where a wrong answer would follow (an index past the tables, a
//! truncated integer or string, a table size over the bound, bad Huffman padding): the
//! block is refused and, since the dynamic table may then differ from the encoder's, the
//! caller treats the connection as undecodable. Limits keep a hostile peer from costing
//! more than the bytes it sends: integers are bounded, strings cannot be longer than the
//! block, and the table never holds more than its bound.

use std::collections::VecDeque;

/// Why a header block could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    #[error("the block ends inside a field")]
    Truncated,
    #[error("an integer over 2^28")]
    IntegerOverflow,
    #[error("index {0} is in neither table")]
    BadIndex(usize),
    #[error("a dynamic table size update to {0}, over the bound")]
    TableSizeOverBound(usize),
    #[error("a dynamic table size update after the first field of the block")]
    LateSizeUpdate,
    #[error("an invalid Huffman-coded string")]
    Huffman,
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// SETTINGS_HEADER_TABLE_SIZE's initial value: the table's size until the encoder says
/// otherwise.
const DEFAULT_TABLE_SIZE: usize = 4096;
/// RFC 7541 §4.1: an entry costs its name, its value and 32 octets.
const ENTRY_OVERHEAD: usize = 32;

/// A dynamic table entry: name and value.
type Entry = (Box<[u8]>, Box<[u8]>);

/// One direction's decoder: its dynamic table, newest entry first.
#[derive(Debug)]
pub struct Decoder {
    table: VecDeque<Entry>,
    /// Sum of the entries' sizes.
    size: usize,
    /// The size the encoder set (at most `bound`).
    max_size: usize,
    /// The most the encoder may set: the agent's bound, whatever the peers negotiated.
    bound: usize,
    /// Huffman-decoded strings, reused.
    scratch_name: Vec<u8>,
    scratch_value: Vec<u8>,
}

impl Decoder {
    /// A decoder whose dynamic table the encoder may size up to `bound` bytes.
    pub fn new(bound: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: DEFAULT_TABLE_SIZE.min(bound),
            bound,
            scratch_name: Vec::new(),
            scratch_value: Vec::new(),
        }
    }

    /// Decodes one complete header block, calling `field` with each name and value in
    /// order. On an error the table may be partly updated: the caller must not decode
    /// more of this direction.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut at = 0;
        let mut fields = 0usize;
        while at < block.len() {
            let first = block[at];
            if first & 0x80 != 0 {
                // Indexed field.
                let index = integer(block, &mut at, 7)?;
                let (name, value) = self.entry(index)?;
                field(name, value);
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                let index = integer(block, &mut at, 6)?;
                self.literal(block, &mut at, index)?;
                let (name, value) = (
                    self.scratch_name.clone().into_boxed_slice(),
                    self.scratch_value.clone().into_boxed_slice(),
                );
                field(&name, &value);
                self.insert(name, value);
            } else if first & 0x20 != 0 {
                // Dynamic table size update: only at the start of a block (§4.2).
                if fields > 0 {
                    return Err(HpackError::LateSizeUpdate);
                }
                let size = integer(block, &mut at, 5)?;
                if size > self.bound {
                    return Err(HpackError::TableSizeOverBound(size));
                }
                self.max_size = size;
                self.evict_to(size);
                continue;
            } else {
                // Literal without indexing, or never indexed.
                let index = integer(block, &mut at, 4)?;
                self.literal(block, &mut at, index)?;
                field(&self.scratch_name, &self.scratch_value);
            }
            fields += 1;
        }
        Ok(())
    }

    /// The entry at `index` (1-based; the static table, then the dynamic one).
    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::BadIndex(0)),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .table
                .get(index - 62)
                .map(|(n, v)| (&**n, &**v))
                .ok_or(HpackError::BadIndex(index)),
        }
    }

    /// A literal's name (indexed when `index` > 0, else a string) and value, into the
    /// scratch buffers.
    fn literal(&mut self, block: &[u8], at: &mut usize, index: usize) -> Result<(), HpackError> {
        let mut name = std::mem::take(&mut self.scratch_name);
        name.clear();
        let named = if index == 0 {
            string(block, at, &mut name)
        } else {
            self.entry(index).map(|(n, _)| name.extend_from_slice(n))
        };
        self.scratch_name = name;
        named?;
        self.scratch_value.clear();
        string(block, at, &mut self.scratch_value)
    }

    fn insert(&mut self, name: Box<[u8]>, value: Box<[u8]>) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            // §4.4: an entry larger than the table empties it and is not added.
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        self.size += size;
        self.table.push_front((name, value));
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some((n, v)) = self.table.pop_back() else {
                self.size = 0;
                return;
            };
            self.size -= n.len() + v.len() + ENTRY_OVERHEAD;
        }
    }
}

/// An integer with an `prefix`-bit prefix (§5.1), at most 2^28 (no header block needs
/// more; larger would only be a way to spin or overflow).
fn integer(block: &[u8], at: &mut usize, prefix: u32) -> Result<usize, HpackError> {
    let max_prefix = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*at).ok_or(HpackError::Truncated)?) & max_prefix;
    *at += 1;
    if value < max_prefix {
        return Ok(value);
    }
    let mut shift = 0;
    loop {
        let byte = *block.get(*at).ok_or(HpackError::Truncated)?;
        *at += 1;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// A string literal (§5.2), raw or Huffman-coded, appended to `out`.
fn string(block: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = *block.get(*at).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, at, 7)?;
    let end = at.checked_add(len).ok_or(HpackError::Truncated)?;
    let bytes = block.get(*at..end).ok_or(HpackError::Truncated)?;
    *at = end;
    if huffman {
        httlib_huffman::decode(bytes, out, httlib_huffman::DecoderSpeed::FiveBits)
            .map_err(|_| HpackError::Huffman)
    } else {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut out = Vec::new();
        d.decode(block, |n, v| {
            out.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            ))
        })?;
        Ok(out)
    }

    fn huffman(s: &str) -> Vec<u8> {
        let mut coded = Vec::new();
        httlib_huffman::encode(s.as_bytes(), &mut coded).unwrap();
        assert!(coded.len() < 127);
        let mut out = vec![0x80 | coded.len() as u8];
        out.extend(coded);
        out
    }

    fn raw(s: &str) -> Vec<u8> {
        assert!(s.len() < 127);
        let mut out = vec![s.len() as u8];
        out.extend(s.as_bytes());
        out
    }

    /// Every static entry, checked against an independent decoder (loona-hpack's).
    #[test]
    fn static_table_matches_an_independent_decoder() {
        for index in 1..=61u8 {
            let block = [0x80 | index];
            let mut theirs = Vec::new();
            loona_hpack::Decoder::new()
                .decode_with_cb(&block, |n, v| theirs.push((n.to_vec(), v.to_vec())))
                .unwrap();
            let mut ours = Vec::new();
            Decoder::new(4096)
                .decode(&block, |n, v| ours.push((n.to_vec(), v.to_vec())))
                .unwrap();
            assert_eq!(ours, theirs, "index {index}");
        }
    }

    /// Blocks from an independent encoder (loona-hpack's: indexing, literals, table
    /// pressure), decoded by both.
    #[test]
    fn decodes_what_an_independent_encoder_writes() {
        let mut enc = loona_hpack::Encoder::new();
        let mut theirs = loona_hpack::Decoder::new();
        let mut ours = Decoder::new(64 * 1024);
        for call in 0..200 {
            let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..12)
                .map(|k| {
                    (
                        format!("x-key-{}", (call * 7 + k) % 40).into_bytes(),
                        format!("value-{call}-{k}-{}", "v".repeat(k * 9)).into_bytes(),
                    )
                })
                .chain([(b":path".to_vec(), b"/demo.Greeter/Say".to_vec())])
                .collect();
            let block = enc.encode(owned.iter().map(|(n, v)| (&n[..], &v[..])));
            let mut want = Vec::new();
            theirs
                .decode_with_cb(&block, |n, v| want.push((n.to_vec(), v.to_vec())))
                .unwrap();
            let mut got = Vec::new();
            ours.decode(&block, |n, v| got.push((n.to_vec(), v.to_vec())))
                .unwrap();
            assert_eq!(got, want, "call {call}");
        }
    }

    /// RFC 7541 C.4.1-C.4.3: requests with Huffman coding, the dynamic table carried.
    #[test]
    fn huffman_coded_requests_share_the_table() {
        let mut d = Decoder::new(4096);
        let mut first = vec![0x82, 0x86, 0x84, 0x41];
        first.extend(huffman("www.example.com"));
        assert_eq!(
            decode_all(&mut d, &first).unwrap(),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        // Index 62: the authority just added; a literal with a Huffman-coded value.
        let mut second = vec![0x82, 0x86, 0x84, 0xbe, 0x58];
        second.extend(huffman("no-cache"));
        let got = decode_all(&mut d, &second).unwrap();
        assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(got[4], ("cache-control".into(), "no-cache".into()));
        assert_eq!(d.table.len(), 2);
        // A literal name, never indexed: not added.
        let mut third = vec![0x10];
        third.extend(huffman("custom-key"));
        third.extend(raw("custom-value"));
        let got = decode_all(&mut d, &third).unwrap();
        assert_eq!(got, [("custom-key".into(), "custom-value".into())]);
        assert_eq!(d.table.len(), 2);
    }

    #[test]
    fn size_updates_evict_and_are_bounded() {
        let mut d = Decoder::new(8192);
        let mut block = vec![0x40];
        block.extend(raw("a"));
        block.extend(raw("b"));
        decode_all(&mut d, &block).unwrap();
        assert_eq!(d.table.len(), 1);
        // Size 0 empties the table; then index 62 is gone.
        assert_eq!(
            decode_all(&mut d, &[0x20, 0xbe]),
            Err(HpackError::BadIndex(62))
        );
        // 0x3f 0xe1 0x1f = 31 + 0x61 + (0x1f << 7) = 4096.
        decode_all(&mut d, &[0x3f, 0xe1, 0x1f]).unwrap();
        assert_eq!(d.max_size, 4096);
        // Over the bound: 31 + 127 + (127 << 7) + ... = far over 8192.
        assert_eq!(
            decode_all(&mut d, &[0x3f, 0xff, 0xff, 0x01]),
            Err(HpackError::TableSizeOverBound(
                31 + 127 + (127 << 7) + (1 << 14)
            ))
        );
        // After a field: refused.
        assert_eq!(
            decode_all(&mut d, &[0x82, 0x20]),
            Err(HpackError::LateSizeUpdate)
        );
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new(4096);
        let mut block = vec![0x40];
        block.extend(raw("small"));
        block.extend(raw("x"));
        decode_all(&mut d, &block).unwrap();
        let big = "y".repeat(5000);
        let mut block = vec![0x40];
        block.extend(raw("big"));
        block.push(0x7f);
        // 5000 - 127 = 4873 = 0x1309: 0x89 0x26.
        block.extend([0x89, 0x26]);
        block.extend(big.as_bytes());
        let got = decode_all(&mut d, &block).unwrap();
        assert_eq!(got[0].1.len(), 5000, "still reported");
        assert!(d.table.is_empty() && d.size == 0);
    }

    #[test]
    fn garbage_and_truncation_are_errors_never_panics() {
        let mut d = Decoder::new(4096);
        assert_eq!(decode_all(&mut d, &[0x80]), Err(HpackError::BadIndex(0)));
        assert_eq!(
            decode_all(&mut d, &[0xff, 0xff]),
            Err(HpackError::Truncated)
        );
        assert_eq!(
            decode_all(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Err(HpackError::IntegerOverflow)
        );
        assert_eq!(
            decode_all(&mut d, &[0x40, 0x05, b'a']),
            Err(HpackError::Truncated)
        );
        // Huffman padding of a whole byte of ones (more than 7 bits): invalid.
        assert_eq!(
            decode_all(&mut d, &[0x00, 0x01, b'a', 0x81, 0xff]),
            Err(HpackError::Huffman)
        );
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let len = (rng % 40) as usize;
            let block: Vec<u8> = (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng as u8
                })
                .collect();
            let _ = Decoder::new(4096).decode(&block, |_, _| {});
        }
    }

    /// Split at every offset, the decoder refuses the first part or decodes a prefix of
    /// the fields; the whole block always decodes the same.
    #[test]
    fn truncated_blocks_never_decode_wrongly() {
        let mut block = vec![0x82, 0x41];
        block.extend(huffman("www.example.com"));
        block.push(0x58);
        block.extend(huffman("no-cache"));
        let whole = decode_all(&mut Decoder::new(4096), &block).unwrap();
        for cut in 0..block.len() {
            if let Ok(part) = decode_all(&mut Decoder::new(4096), &block[..cut]) {
                assert!(whole.starts_with(&part), "cut {cut}: {part:?}");
            }
        }
    }
}
