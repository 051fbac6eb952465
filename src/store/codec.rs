//! Key layout and record encoding (docs/storage.md "Layout" and "Encoding").
//!
//! Keys (bytes):
//!
//! | key | value |
//! | --- | --- |
//! | `\0schema_version` | the schema version, u32 big-endian |
//! | `S` `o`/`i` local-JID `\0` remote-AOR | a subscription record (outbound/inbound) |
//! | `I` local-JID `\0` remote-AOR | an IM dialog record |
//!
//! The parties are in the key only. A lookup is one point get; the records of one kind, one
//! direction, or one local user in one direction are a prefix scan.
//!
//! Values start with a record version byte (1), then fixed bytes and LEB128 varints; strings
//! and byte strings are a varint length and the bytes. Decoding checks every length against
//! what is left, every enum byte and flag bit, UTF-8, and that nothing is left over; any failure
//! is [`StoreError::Corrupt`] naming the key. It never panics and never allocates more than the
//! input's size.

use super::{Approval, DialogRecord, Direction, DisplayName, StoreError, SubState, Subscription};

/// The schema version key.
pub(crate) const META_SCHEMA: &[u8] = b"\0schema_version";
/// Prefix of every subscription key.
pub(crate) const SUB_PREFIX: &[u8] = b"S";
/// Prefix of every IM dialog key.
pub(crate) const IM_PREFIX: &[u8] = b"I";

/// The version byte every record starts with.
const RECORD_V1: u8 = 1;

const SUB_HAS_DIALOG: u8 = 1;
const SUB_HAS_SENT: u8 = 2;
const SUB_HAS_RECEIVED: u8 = 4;
/// A display name follows the last received bytes (schema version 2).
const SUB_HAS_NAME: u8 = 8;
/// The display name came from a PIDF document (only with [`SUB_HAS_NAME`]).
const SUB_NAME_FROM_PIDF: u8 = 16;

const DLG_HAS_LOCAL_DISPLAY: u8 = 1;
const DLG_HAS_REMOTE_DISPLAY: u8 = 2;
const DLG_HAS_REMOTE_CSEQ: u8 = 4;

fn dir_byte(d: Direction) -> u8 {
    match d {
        Direction::Outbound => b'o',
        Direction::Inbound => b'i',
    }
}

fn check_part(what: &str, s: &str) -> Result<(), StoreError> {
    if s.is_empty() {
        return Err(StoreError::InvalidKey(format!("empty {what}")));
    }
    if s.contains('\0') {
        return Err(StoreError::InvalidKey(format!("NUL in {what} {s:?}")));
    }
    Ok(())
}

/// `S` + direction: every subscription of one direction.
pub(crate) fn sub_dir_prefix(d: Direction) -> [u8; 2] {
    [b'S', dir_byte(d)]
}

/// `S` + direction + local JID + NUL: one user's subscriptions in one direction.
pub(crate) fn sub_user_prefix(d: Direction, local_jid: &str) -> Result<Vec<u8>, StoreError> {
    check_part("local JID", local_jid)?;
    let mut k = Vec::with_capacity(3 + local_jid.len());
    k.extend_from_slice(&sub_dir_prefix(d));
    k.extend_from_slice(local_jid.as_bytes());
    k.push(0);
    Ok(k)
}

pub(crate) fn sub_key(
    d: Direction,
    local_jid: &str,
    remote_aor: &str,
) -> Result<Vec<u8>, StoreError> {
    check_part("remote AOR", remote_aor)?;
    let mut k = sub_user_prefix(d, local_jid)?;
    k.extend_from_slice(remote_aor.as_bytes());
    Ok(k)
}

pub(crate) fn im_key(local_jid: &str, remote_aor: &str) -> Result<Vec<u8>, StoreError> {
    check_part("local JID", local_jid)?;
    check_part("remote AOR", remote_aor)?;
    let mut k = Vec::with_capacity(2 + local_jid.len() + remote_aor.len());
    k.extend_from_slice(IM_PREFIX);
    k.extend_from_slice(local_jid.as_bytes());
    k.push(0);
    k.extend_from_slice(remote_aor.as_bytes());
    Ok(k)
}

/// A key as people read it in errors: `subscription/outbound/alice@x/sip:bob@y`, or escaped
/// bytes for keys of no known shape.
pub(crate) fn describe_key(key: &[u8]) -> String {
    let parties = |rest: &[u8]| -> Option<(String, String)> {
        let nul = rest.iter().position(|&b| b == 0)?;
        let jid = std::str::from_utf8(&rest[..nul]).ok()?;
        let aor = std::str::from_utf8(&rest[nul + 1..]).ok()?;
        Some((jid.to_owned(), aor.to_owned()))
    };
    let known = match key {
        [b'S', b'o', rest @ ..] => {
            parties(rest).map(|(j, a)| format!("subscription/outbound/{j}/{a}"))
        }
        [b'S', b'i', rest @ ..] => {
            parties(rest).map(|(j, a)| format!("subscription/inbound/{j}/{a}"))
        }
        [b'I', rest @ ..] => parties(rest).map(|(j, a)| format!("im_dialog/{j}/{a}")),
        _ => None,
    };
    known.unwrap_or_else(|| format!("\"{}\"", key.escape_ascii()))
}

fn corrupt(key: &[u8], reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: describe_key(key),
        reason: reason.into(),
    }
}

/// Splits `<prefix>` JID NUL AOR into its parties.
fn split_parties(key: &[u8], prefix_len: usize) -> Result<(String, String), StoreError> {
    let rest = key
        .get(prefix_len..)
        .ok_or_else(|| corrupt(key, "key too short"))?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| corrupt(key, "no NUL between the parties in the key"))?;
    let jid =
        std::str::from_utf8(&rest[..nul]).map_err(|_| corrupt(key, "local JID is not UTF-8"))?;
    let aor = std::str::from_utf8(&rest[nul + 1..])
        .map_err(|_| corrupt(key, "remote AOR is not UTF-8"))?;
    if jid.is_empty() || aor.is_empty() || aor.contains('\0') {
        return Err(corrupt(key, "empty party or second NUL in the key"));
    }
    Ok((jid.to_owned(), aor.to_owned()))
}

// ----------------------------------------------------------------------------------------------
// Writing

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_dialog(out: &mut Vec<u8>, d: &DialogRecord) {
    let mut flags = 0;
    if d.local_display.is_some() {
        flags |= DLG_HAS_LOCAL_DISPLAY;
    }
    if d.remote_display.is_some() {
        flags |= DLG_HAS_REMOTE_DISPLAY;
    }
    if d.remote_cseq.is_some() {
        flags |= DLG_HAS_REMOTE_CSEQ;
    }
    out.push(flags);
    put_bytes(out, d.call_id.as_bytes());
    put_bytes(out, d.local_tag.as_bytes());
    put_bytes(out, d.remote_tag.as_bytes());
    put_bytes(out, d.local_uri.as_bytes());
    if let Some(s) = &d.local_display {
        put_bytes(out, s.as_bytes());
    }
    put_bytes(out, d.remote_uri.as_bytes());
    if let Some(s) = &d.remote_display {
        put_bytes(out, s.as_bytes());
    }
    put_bytes(out, d.remote_target.as_bytes());
    put_varint(out, d.route_set.len() as u64);
    for r in &d.route_set {
        put_bytes(out, r.as_bytes());
    }
    put_varint(out, u64::from(d.local_cseq));
    if let Some(c) = d.remote_cseq {
        put_varint(out, u64::from(c));
    }
    put_varint(out, d.created_unix);
}

fn dialog_size_hint(d: &DialogRecord) -> usize {
    32 + d.call_id.len()
        + d.local_tag.len()
        + d.remote_tag.len()
        + d.local_uri.len()
        + d.local_display.as_ref().map_or(0, String::len)
        + d.remote_uri.len()
        + d.remote_display.as_ref().map_or(0, String::len)
        + d.remote_target.len()
        + d.route_set.iter().map(|r| r.len() + 2).sum::<usize>()
}

fn state_byte(s: SubState) -> u8 {
    match s {
        SubState::Pending => 0,
        SubState::Active => 1,
        SubState::Terminated => 2,
    }
}

fn approval_byte(a: Approval) -> u8 {
    match a {
        Approval::None => 0,
        Approval::Requested => 1,
        Approval::Approved => 2,
        Approval::Denied => 3,
    }
}

/// A subscription's value (its parties go in the key).
pub(crate) fn encode_subscription(s: &Subscription) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        24 + s.dialog.as_ref().map_or(0, dialog_size_hint)
            + s.last_sent.as_ref().map_or(0, Vec::len)
            + s.last_received.as_ref().map_or(0, Vec::len)
            + s.display_name.as_ref().map_or(0, |n| n.text.len() + 2),
    );
    let mut flags = 0;
    if s.dialog.is_some() {
        flags |= SUB_HAS_DIALOG;
    }
    if s.last_sent.is_some() {
        flags |= SUB_HAS_SENT;
    }
    if s.last_received.is_some() {
        flags |= SUB_HAS_RECEIVED;
    }
    if let Some(n) = &s.display_name {
        flags |= SUB_HAS_NAME;
        if n.from_pidf {
            flags |= SUB_NAME_FROM_PIDF;
        }
    }
    out.extend_from_slice(&[
        RECORD_V1,
        state_byte(s.state),
        approval_byte(s.approval),
        flags,
    ]);
    put_varint(&mut out, s.expires_unix);
    put_varint(&mut out, s.updated_unix);
    if let Some(d) = &s.dialog {
        put_dialog(&mut out, d);
    }
    if let Some(b) = &s.last_sent {
        put_bytes(&mut out, b);
    }
    if let Some(b) = &s.last_received {
        put_bytes(&mut out, b);
    }
    if let Some(n) = &s.display_name {
        put_bytes(&mut out, n.text.as_bytes());
    }
    out
}

/// An IM dialog's value.
pub(crate) fn encode_im(d: &DialogRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + dialog_size_hint(d));
    out.push(RECORD_V1);
    put_dialog(&mut out, d);
    out
}

// ----------------------------------------------------------------------------------------------
// Reading

struct Reader<'a> {
    key: &'a [u8],
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(key: &'a [u8], buf: &'a [u8]) -> Self {
        Reader { key, buf, pos: 0 }
    }

    fn err(&self, what: &str) -> StoreError {
        corrupt(self.key, format!("{what} at byte {}", self.pos))
    }

    fn u8(&mut self, what: &str) -> Result<u8, StoreError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.err(&format!("truncated before {what}")))?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self, what: &str) -> Result<u64, StoreError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(self.err(&format!("{what} overflows 64 bits")));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err(&format!("{what} overflows 64 bits")))
    }

    fn u32(&mut self, what: &str) -> Result<u32, StoreError> {
        let v = self.varint(what)?;
        u32::try_from(v).map_err(|_| self.err(&format!("{what} {v} is above 2^32-1")))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], StoreError> {
        let len = self.varint(what)?;
        let left = self.buf.len() - self.pos;
        if len > left as u64 {
            return Err(self.err(&format!(
                "{what} length {len} exceeds the {left} bytes left"
            )));
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn string(&mut self, what: &str) -> Result<String, StoreError> {
        let b = self.bytes(what)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }

    fn flags(&mut self, what: &str, known: u8) -> Result<u8, StoreError> {
        let f = self.u8(what)?;
        if f & !known != 0 {
            return Err(self.err(&format!("unknown {what} bits {f:#04x}")));
        }
        Ok(f)
    }

    fn version(&mut self) -> Result<(), StoreError> {
        match self.u8("record version")? {
            RECORD_V1 => Ok(()),
            v => Err(corrupt(
                self.key,
                format!("record version {v} is not one this build reads (1)"),
            )),
        }
    }

    fn finish(&self) -> Result<(), StoreError> {
        if self.pos != self.buf.len() {
            return Err(self.err(&format!("{} bytes left over", self.buf.len() - self.pos)));
        }
        Ok(())
    }

    fn dialog(&mut self) -> Result<DialogRecord, StoreError> {
        let flags = self.flags(
            "dialog flags",
            DLG_HAS_LOCAL_DISPLAY | DLG_HAS_REMOTE_DISPLAY | DLG_HAS_REMOTE_CSEQ,
        )?;
        let call_id = self.string("call-id")?;
        let local_tag = self.string("local tag")?;
        let remote_tag = self.string("remote tag")?;
        let local_uri = self.string("local URI")?;
        let local_display = if flags & DLG_HAS_LOCAL_DISPLAY != 0 {
            Some(self.string("local display name")?)
        } else {
            None
        };
        let remote_uri = self.string("remote URI")?;
        let remote_display = if flags & DLG_HAS_REMOTE_DISPLAY != 0 {
            Some(self.string("remote display name")?)
        } else {
            None
        };
        let remote_target = self.string("remote target")?;
        let routes = self.varint("route count")?;
        // Each route takes at least its length byte: a larger count cannot be right (and must
        // not size an allocation).
        if routes > (self.buf.len() - self.pos) as u64 {
            return Err(self.err(&format!("route count {routes} exceeds the bytes left")));
        }
        let mut route_set = Vec::with_capacity(routes as usize);
        for _ in 0..routes {
            route_set.push(self.string("route")?);
        }
        let local_cseq = self.u32("local CSeq")?;
        let remote_cseq = if flags & DLG_HAS_REMOTE_CSEQ != 0 {
            Some(self.u32("remote CSeq")?)
        } else {
            None
        };
        let created_unix = self.varint("created")?;
        Ok(DialogRecord {
            call_id,
            local_tag,
            remote_tag,
            local_uri,
            local_display,
            remote_uri,
            remote_display,
            remote_target,
            route_set,
            local_cseq,
            remote_cseq,
            created_unix,
        })
    }
}

/// A subscription from its key and value.
pub(crate) fn decode_subscription(key: &[u8], value: &[u8]) -> Result<Subscription, StoreError> {
    let direction = match key {
        [b'S', b'o', ..] => Direction::Outbound,
        [b'S', b'i', ..] => Direction::Inbound,
        _ => return Err(corrupt(key, "not a subscription key")),
    };
    let (local_jid, remote_aor) = split_parties(key, 2)?;
    let mut r = Reader::new(key, value);
    r.version()?;
    let state = match r.u8("state")? {
        0 => SubState::Pending,
        1 => SubState::Active,
        2 => SubState::Terminated,
        v => return Err(r.err(&format!("unknown state {v}"))),
    };
    let approval = match r.u8("approval")? {
        0 => Approval::None,
        1 => Approval::Requested,
        2 => Approval::Approved,
        3 => Approval::Denied,
        v => return Err(r.err(&format!("unknown approval {v}"))),
    };
    let flags = r.flags(
        "subscription flags",
        SUB_HAS_DIALOG | SUB_HAS_SENT | SUB_HAS_RECEIVED | SUB_HAS_NAME | SUB_NAME_FROM_PIDF,
    )?;
    if flags & SUB_NAME_FROM_PIDF != 0 && flags & SUB_HAS_NAME == 0 {
        return Err(r.err("display name source flag without a display name"));
    }
    let expires_unix = r.varint("expires")?;
    let updated_unix = r.varint("updated")?;
    let dialog = if flags & SUB_HAS_DIALOG != 0 {
        Some(r.dialog()?)
    } else {
        None
    };
    let last_sent = if flags & SUB_HAS_SENT != 0 {
        Some(r.bytes("last sent")?.to_vec())
    } else {
        None
    };
    let last_received = if flags & SUB_HAS_RECEIVED != 0 {
        Some(r.bytes("last received")?.to_vec())
    } else {
        None
    };
    let display_name = if flags & SUB_HAS_NAME != 0 {
        Some(DisplayName {
            text: r.string("display name")?,
            from_pidf: flags & SUB_NAME_FROM_PIDF != 0,
        })
    } else {
        None
    };
    r.finish()?;
    Ok(Subscription {
        direction,
        local_jid,
        remote_aor,
        dialog,
        expires_unix,
        state,
        approval,
        last_sent,
        last_received,
        display_name,
        updated_unix,
    })
}

/// An IM dialog from its key and value.
pub(crate) fn decode_im(key: &[u8], value: &[u8]) -> Result<super::ImDialog, StoreError> {
    if !key.starts_with(IM_PREFIX) {
        return Err(corrupt(key, "not an IM dialog key"));
    }
    let (local_jid, remote_aor) = split_parties(key, 1)?;
    let mut r = Reader::new(key, value);
    r.version()?;
    let dialog = r.dialog()?;
    r.finish()?;
    Ok(super::ImDialog {
        local_jid,
        remote_aor,
        dialog,
    })
}

/// The schema version value.
pub(crate) fn encode_schema(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

pub(crate) fn decode_schema(value: &[u8]) -> Result<u32, StoreError> {
    <[u8; 4]>::try_from(value)
        .map(u32::from_be_bytes)
        .map_err(|_| {
            corrupt(
                META_SCHEMA,
                format!("schema version is {} bytes, not 4", value.len()),
            )
        })
}
