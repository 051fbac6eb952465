//! HTML → plain text: a small tokenizer of our own, one linear pass that never builds a tree
//! (rules at [`super::plain_text`]).

use super::text::windows_1252;

/// Elements dropped together with their content.
const DROPPED: &[&str] = &["script", "style", "title", "template"];

/// Elements that start and end a line.
const BLOCKS: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "caption",
    "center",
    "dd",
    "details",
    "dialog",
    "dir",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "html",
    "li",
    "main",
    "menu",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "summary",
    "table",
    "tbody",
    "tfoot",
    "thead",
    "tr",
    "ul",
];

fn one_of(name: &str, list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Builds the text: white space collapsing, line breaks, at most one empty line in a row.
#[derive(Default)]
struct TextOut {
    out: String,
    /// White space seen since the last character.
    space: bool,
    /// Line breaks owed before the next character (0–2).
    breaks: u8,
    /// Inside `<pre>` (nesting count).
    pre: usize,
}

impl TextOut {
    /// Writes what is owed before a visible character.
    fn flush(&mut self) {
        if self.out.is_empty() {
            self.breaks = 0;
            self.space = false;
            return;
        }
        if self.breaks > 0 {
            let have = self.out.len() - self.out.trim_end_matches('\n').len();
            // Trailing spaces before a line break go.
            let trimmed = self.out.trim_end_matches([' ', '\t']).len();
            if have == 0 {
                self.out.truncate(trimmed);
            }
            for _ in have..usize::from(self.breaks) {
                self.out.push('\n');
            }
            self.breaks = 0;
            self.space = false;
        } else if self.space {
            if !self.out.ends_with('\n') {
                self.out.push(' ');
            }
            self.space = false;
        }
    }

    /// One character of text content.
    fn text_char(&mut self, c: char) {
        match c {
            ' ' | '\t' | '\n' | '\r' | '\u{C}' if self.pre == 0 => self.space = true,
            '\n' => {
                self.flush();
                self.out.push('\n');
            }
            '\r' => {}
            // Invisible or not allowed in XML: dropped.
            '\u{0}'..='\u{8}'
            | '\u{B}'..='\u{C}'
            | '\u{E}'..='\u{1F}'
            | '\u{7F}'..='\u{9F}'
            | '\u{AD}'
            | '\u{FEFF}'
            | '\u{FFFE}'
            | '\u{FFFF}' => {}
            '\u{A0}' => {
                self.flush();
                self.out.push(' ');
            }
            c => {
                self.flush();
                self.out.push(c);
            }
        }
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            self.text_char(c);
        }
    }

    fn block(&mut self) {
        self.breaks = self.breaks.max(1);
    }

    fn line_break(&mut self) {
        self.breaks = (self.breaks + 1).min(2);
    }

    fn finish(self) -> String {
        let trimmed = self.out.trim();
        if trimmed.len() == self.out.len() {
            self.out
        } else {
            trimmed.to_owned()
        }
    }
}

/// An open `<a href>`: its target and where its text starts in the output.
struct Anchor {
    href: String,
    start: usize,
}

/// Converts HTML to plain text. See [`plain_text`] for the rules. One linear pass; never
/// longer than the input.
pub(super) fn html_to_text(html: &str) -> String {
    let b = html.as_bytes();
    let mut w = TextOut::default();
    let mut anchor: Option<Anchor> = None;
    let mut i = 0;
    let mut text_start = 0;
    while i < b.len() {
        match b[i] {
            b'<' => {
                let next = b.get(i + 1).copied().unwrap_or(0);
                let tag_kind = match next {
                    b'!' | b'?' => 1,
                    b'/' if b.get(i + 2).is_some_and(|c| c.is_ascii_alphabetic()) => 2,
                    c if c.is_ascii_alphabetic() => 3,
                    _ => 0,
                };
                if tag_kind == 0 {
                    // A literal `<`.
                    i += 1;
                    continue;
                }
                w.text(&html[text_start..i]);
                match tag_kind {
                    1 => {
                        i = if html[i..].starts_with("<!--") {
                            find_from(b, i + 4, b"-->").map_or(b.len(), |e| e + 3)
                        } else {
                            find_byte(b, i, b'>').map_or(b.len(), |e| e + 1)
                        };
                    }
                    2 => {
                        let (name, end) = tag_name(html, i + 2);
                        i = find_byte(b, end, b'>').map_or(b.len(), |e| e + 1);
                        end_tag(&mut w, &mut anchor, name);
                    }
                    _ => {
                        let (name, end) = tag_name(html, i + 1);
                        let tag = read_attributes(html, end);
                        i = tag.end;
                        if one_of(name, DROPPED) && !tag.self_closing {
                            i = skip_raw_text(html, i, name);
                        } else {
                            start_tag(&mut w, &mut anchor, name, &tag);
                        }
                    }
                }
                text_start = i;
            }
            b'&' => {
                w.text(&html[text_start..i]);
                let (decoded, len) = decode_entity(&html[i..]);
                match decoded {
                    Decoded::Char(c) => w.text_char(c),
                    Decoded::Literal => w.text_char('&'),
                }
                i += len;
                text_start = i;
            }
            _ => i += 1,
        }
    }
    w.text(&html[text_start..]);
    w.finish()
}

fn find_byte(b: &[u8], from: usize, c: u8) -> Option<usize> {
    memchr::memchr(c, b.get(from..)?).map(|o| from + o)
}

fn find_from(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(b.get(from..)?, needle).map(|o| from + o)
}

/// The tag name starting at `from` and the index after it.
fn tag_name(html: &str, from: usize) -> (&str, usize) {
    let len = html.as_bytes()[from..]
        .iter()
        .take_while(|c| !c.is_ascii_whitespace() && !matches!(c, b'/' | b'>'))
        .count();
    (&html[from..from + len], from + len)
}

/// What follows a start tag's name.
struct Tag<'h> {
    /// `(name, raw value)` of the first few attributes.
    attributes: Vec<(&'h str, &'h str)>,
    self_closing: bool,
    /// Index after the closing `>` (or the input's end).
    end: usize,
}

impl Tag<'_> {
    /// An attribute's value with entities decoded.
    fn attribute(&self, name: &str) -> Option<String> {
        self.attributes
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_entities(v))
    }
}

/// Reads attributes (HTML syntax: quoted, unquoted or bare) up to the tag's `>`.
fn read_attributes(html: &str, from: usize) -> Tag<'_> {
    const MAX_ATTRIBUTES: usize = 16;
    let b = html.as_bytes();
    let mut attributes = Vec::new();
    let mut self_closing = false;
    let mut i = from;
    loop {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            self_closing = b[i] == b'/';
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        if b[i] == b'>' {
            i += 1;
            break;
        }
        self_closing = false;
        let name_start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        // A name starts with any byte (even `=`), so each round moves on.
        if i == name_start {
            i += 1;
        }
        let name = &html[name_start..i];
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        let mut value = "";
        if b.get(j) == Some(&b'=') {
            j += 1;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            match b.get(j) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = find_byte(b, j + 1, q).unwrap_or(b.len());
                    value = &html[j + 1..end];
                    i = (end + 1).min(b.len());
                }
                _ => {
                    let start = j;
                    while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'>' {
                        j += 1;
                    }
                    value = &html[start..j];
                    i = j;
                }
            }
        }
        if attributes.len() < MAX_ATTRIBUTES {
            attributes.push((name, value));
        }
    }
    Tag {
        attributes,
        self_closing,
        end: i,
    }
}

/// Skips the content of a dropped element up to and including its end tag (or to the end).
fn skip_raw_text(html: &str, from: usize, name: &str) -> usize {
    let b = html.as_bytes();
    let mut i = from;
    while let Some(lt) = find_byte(b, i, b'<') {
        let candidate = lt + 2 + name.len();
        if b.get(lt + 1) == Some(&b'/')
            && html
                .get(lt + 2..candidate)
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
            && b.get(candidate)
                .is_none_or(|c| c.is_ascii_whitespace() || matches!(c, b'/' | b'>'))
        {
            return find_byte(b, candidate, b'>').map_or(b.len(), |e| e + 1);
        }
        i = lt + 1;
    }
    b.len()
}

fn start_tag(w: &mut TextOut, anchor: &mut Option<Anchor>, name: &str, tag: &Tag<'_>) {
    if name.eq_ignore_ascii_case("br") {
        w.line_break();
    } else if one_of(name, BLOCKS) {
        w.block();
        if name.eq_ignore_ascii_case("pre") && !tag.self_closing {
            w.pre += 1;
        }
    } else if name.eq_ignore_ascii_case("td") || name.eq_ignore_ascii_case("th") {
        w.space = true;
    } else if name.eq_ignore_ascii_case("img") {
        if let Some(alt) = tag.attribute("alt") {
            w.text(&alt);
        }
    } else if name.eq_ignore_ascii_case("a") && !tag.self_closing {
        *anchor = tag.attribute("href").map(|href| Anchor {
            href: href.trim().to_owned(),
            start: w.out.len(),
        });
    }
}

fn end_tag(w: &mut TextOut, anchor: &mut Option<Anchor>, name: &str) {
    if one_of(name, BLOCKS) {
        if name.eq_ignore_ascii_case("pre") {
            w.pre = w.pre.saturating_sub(1);
        }
        w.block();
    } else if name.eq_ignore_ascii_case("br") {
        // `</br>` is a `<br>` in every browser.
        w.line_break();
    } else if name.eq_ignore_ascii_case("a") {
        if let Some(a) = anchor.take() {
            let shown = w.out.get(a.start..).unwrap_or_default().trim();
            let bare = a
                .href
                .get(..7)
                .filter(|s| s.eq_ignore_ascii_case("mailto:"))
                .map_or(a.href.as_str(), |_| &a.href[7..]);
            if shows_target(&a.href) && shown != a.href && shown != bare {
                if shown.is_empty() {
                    w.text(&a.href);
                } else {
                    w.text(" (");
                    w.text(&a.href);
                    w.text(")");
                }
            }
        }
    }
}

/// Link targets worth showing next to their text (never `javascript:` and the like).
fn shows_target(href: &str) -> bool {
    let scheme = href.split_once(':').map_or("", |(s, _)| s);
    [
        "http", "https", "ftp", "mailto", "sip", "sips", "xmpp", "tel",
    ]
    .iter()
    .any(|s| scheme.eq_ignore_ascii_case(s))
}

/// Decodes every entity in an attribute value.
fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let (decoded, len) = decode_entity(&rest[amp..]);
        match decoded {
            Decoded::Char(c) => out.push(c),
            Decoded::Literal => out.push('&'),
        }
        rest = &rest[amp + len..];
    }
    out.push_str(rest);
    out
}

enum Decoded {
    Char(char),
    /// Not an entity: the `&` stands for itself.
    Literal,
}

/// Decodes the character reference at the start of `s` (which starts with `&`). Returns what
/// it stands for and how many bytes it used (at least 1).
fn decode_entity(s: &str) -> (Decoded, usize) {
    let b = s.as_bytes();
    if b.get(1) == Some(&b'#') {
        let hex = matches!(b.get(2), Some(b'x' | b'X'));
        let start = if hex { 3 } else { 2 };
        let digits = b[start.min(b.len())..]
            .iter()
            .take_while(|c| {
                if hex {
                    c.is_ascii_hexdigit()
                } else {
                    c.is_ascii_digit()
                }
            })
            .count();
        if digits == 0 {
            return (Decoded::Literal, 1);
        }
        let text = &s[start..start + digits];
        let mut len = start + digits;
        if b.get(len) == Some(&b';') {
            len += 1;
        }
        let value = if digits > 8 {
            None
        } else {
            u32::from_str_radix(text, if hex { 16 } else { 10 }).ok()
        };
        return (Decoded::Char(numeric_reference(value)), len);
    }
    let name_len = b[1..]
        .iter()
        .take(32)
        .take_while(|c| c.is_ascii_alphanumeric())
        .count();
    let name = &s[1..1 + name_len];
    if b.get(1 + name_len) == Some(&b';') {
        if let Some(c) = named_entity(name) {
            return (Decoded::Char(c), name_len + 2);
        }
        return (Decoded::Literal, 1);
    }
    // HTML's legacy entities may come without `;`: the longest one that prefixes the name.
    for len in (2..=name_len.min(6)).rev() {
        let prefix = &name[..len];
        if let Some(c) = legacy_entity(prefix) {
            return (Decoded::Char(c), len + 1);
        }
    }
    (Decoded::Literal, 1)
}

/// HTML numeric character reference rules (WHATWG): 0, surrogates and values above U+10FFFF
/// become U+FFFD; 0x80–0x9F are read as windows-1252.
fn numeric_reference(value: Option<u32>) -> char {
    match value {
        Some(v @ 0x80..=0x9F) => windows_1252(u8::try_from(v).unwrap_or(0)),
        Some(0) | None => '\u{FFFD}',
        Some(v) => char::from_u32(v).unwrap_or('\u{FFFD}'),
    }
}

/// HTML 4 Latin-1 entities, U+00A0 to U+00FF in order (HTML also accepts these without `;`).
const LATIN1_ENTITIES: [&str; 96] = [
    "nbsp", "iexcl", "cent", "pound", "curren", "yen", "brvbar", "sect", "uml", "copy", "ordf",
    "laquo", "not", "shy", "reg", "macr", "deg", "plusmn", "sup2", "sup3", "acute", "micro",
    "para", "middot", "cedil", "sup1", "ordm", "raquo", "frac14", "frac12", "frac34", "iquest",
    "Agrave", "Aacute", "Acirc", "Atilde", "Auml", "Aring", "AElig", "Ccedil", "Egrave", "Eacute",
    "Ecirc", "Euml", "Igrave", "Iacute", "Icirc", "Iuml", "ETH", "Ntilde", "Ograve", "Oacute",
    "Ocirc", "Otilde", "Ouml", "times", "Oslash", "Ugrave", "Uacute", "Ucirc", "Uuml", "Yacute",
    "THORN", "szlig", "agrave", "aacute", "acirc", "atilde", "auml", "aring", "aelig", "ccedil",
    "egrave", "eacute", "ecirc", "euml", "igrave", "iacute", "icirc", "iuml", "eth", "ntilde",
    "ograve", "oacute", "ocirc", "otilde", "ouml", "divide", "oslash", "ugrave", "uacute", "ucirc",
    "uuml", "yacute", "thorn", "yuml",
];

/// Entities HTML accepts without `;` (the Latin-1 set and the markup characters).
fn legacy_entity(name: &str) -> Option<char> {
    match name {
        "amp" | "AMP" => Some('&'),
        "lt" | "LT" => Some('<'),
        "gt" | "GT" => Some('>'),
        "quot" | "QUOT" => Some('"'),
        "COPY" => Some('\u{A9}'),
        "REG" => Some('\u{AE}'),
        _ => LATIN1_ENTITIES
            .iter()
            .position(|n| *n == name)
            .and_then(|i| char::from_u32(0xA0 + u32::try_from(i).ok()?)),
    }
}

/// Named entities accepted with `;`: the legacy ones plus common typographic ones.
fn named_entity(name: &str) -> Option<char> {
    if let Some(c) = legacy_entity(name) {
        return Some(c);
    }
    let c = match name {
        "apos" => '\'',
        "OElig" => '\u{152}',
        "oelig" => '\u{153}',
        "Scaron" => '\u{160}',
        "scaron" => '\u{161}',
        "Yuml" => '\u{178}',
        "fnof" => '\u{192}',
        "circ" => '\u{2C6}',
        "tilde" => '\u{2DC}',
        "ensp" => '\u{2002}',
        "emsp" => '\u{2003}',
        "thinsp" => '\u{2009}',
        "zwnj" => '\u{200C}',
        "zwj" => '\u{200D}',
        "lrm" => '\u{200E}',
        "rlm" => '\u{200F}',
        "ndash" => '\u{2013}',
        "mdash" => '\u{2014}',
        "lsquo" => '\u{2018}',
        "rsquo" => '\u{2019}',
        "sbquo" => '\u{201A}',
        "ldquo" => '\u{201C}',
        "rdquo" => '\u{201D}',
        "bdquo" => '\u{201E}',
        "dagger" => '\u{2020}',
        "Dagger" => '\u{2021}',
        "bull" => '\u{2022}',
        "hellip" => '\u{2026}',
        "permil" => '\u{2030}',
        "prime" => '\u{2032}',
        "Prime" => '\u{2033}',
        "lsaquo" => '\u{2039}',
        "rsaquo" => '\u{203A}',
        "euro" => '\u{20AC}',
        "trade" => '\u{2122}',
        "larr" => '\u{2190}',
        "uarr" => '\u{2191}',
        "rarr" => '\u{2192}',
        "darr" => '\u{2193}',
        "harr" => '\u{2194}',
        "hearts" => '\u{2665}',
        _ => return None,
    };
    Some(c)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::core::im_text::plain_text;

    fn html(body: &str) -> String {
        plain_text("text/html; charset=UTF-8", body.as_bytes()).unwrap()
    }

    // --- text/html ------------------------------------------------------------------------------

    #[test]
    fn lync_html_becomes_text() {
        assert_eq!(
            html("<span style=\"font-family:Segoe UI;color:#000000;\">Hello <b>world</b></span>"),
            "Hello world"
        );
        assert_eq!(
            html(
                "<DIV style=\"font-family: Segoe UI; color: #000000; direction: ltr;\">line 1</DIV><DIV>line 2</DIV>"
            ),
            "line 1\nline 2"
        );
        // Communicator's empty paragraph: one empty line.
        assert_eq!(html("<div>a</div><div><br></div><div>b</div>"), "a\n\nb");
        assert_eq!(
            html(
                "<html><head><title>IM</title><meta charset=\"utf-8\"><style>p{}</style></head><body><p>Hi</p></body></html>"
            ),
            "Hi"
        );
    }

    #[test]
    fn html_line_breaks() {
        assert_eq!(html("a<br>b<br/>c<BR />d"), "a\nb\nc\nd");
        assert_eq!(html("a<br><br>b"), "a\n\nb");
        assert_eq!(
            html("a<br><br><br><br>b"),
            "a\n\nb",
            "one empty line at most"
        );
        assert_eq!(html("<p>one</p><p>two</p>"), "one\ntwo");
        assert_eq!(html("<ul><li>x</li><li>y</li></ul>after"), "x\ny\nafter");
        assert_eq!(html("<h1>T</h1>text<hr>more"), "T\ntext\nmore");
        assert_eq!(html("<br><p>lead</p><br>"), "lead", "trimmed");
        assert_eq!(
            html("a </div> b"),
            "a\nb",
            "no trailing space before a break"
        );
        assert_eq!(
            html("<table><tr><td>1</td><td>2</td></tr><tr><td>3</td></tr></table>"),
            "1 2\n3"
        );
        assert_eq!(html("x</br>y"), "x\ny");
    }

    #[test]
    fn html_white_space() {
        assert_eq!(html("  lots   of\n\n  space  "), "lots of space");
        assert_eq!(html("a<b> b </b>c"), "a b c");
        assert_eq!(html("<pre>a  b\n  c</pre>d"), "a  b\n  c\nd");
        assert_eq!(html("a&nbsp;&nbsp;b"), "a  b", "&nbsp; is kept");
        assert_eq!(html("&nbsp;<br>x&nbsp;"), "x", "trimmed at both ends");
        assert_eq!(html("a&nbsp;<br>b"), "a\nb");
        assert_eq!(html("tab\there"), "tab here");
    }

    #[test]
    fn html_dropped_content() {
        assert_eq!(
            html("<style>p { color: red }</style>hi<script>alert('<b>x</b>')</script> there"),
            "hi there"
        );
        assert_eq!(html("<SCRIPT type=x>a</script >b"), "b");
        assert_eq!(html("a<script>never closed <b>x</b>"), "a");
        assert_eq!(html("a<script>x</scriptx>y</script>b"), "ab");
        assert_eq!(html("a<!-- <b>x</b> -->b"), "ab");
        assert_eq!(html("a<!-- never closed"), "a");
        assert_eq!(html("<!DOCTYPE html><?xml version=\"1.0\"?>x"), "x");
        assert_eq!(html("<template><p>t</p></template>ok"), "ok");
    }

    #[test]
    fn html_entities() {
        assert_eq!(
            html("&lt;b&gt; &amp; &quot;q&quot; &apos;a&apos;"),
            "<b> & \"q\" 'a'"
        );
        assert_eq!(html("&eacute;&#233;&#xE9;&#XE9;"), "éééé");
        assert_eq!(html("&copy 2024 &amp co"), "© 2024 & co", "legacy, no ;");
        assert_eq!(html("&copy2024"), "©2024");
        assert_eq!(html("&hellip;&mdash;&euro;&trade;&rsquo;"), "…—€™’");
        assert_eq!(html("&#128512; &#x1F600;"), "😀 😀");
        assert_eq!(
            html("&#150; &#x80;"),
            "– €",
            "0x80-0x9F read as windows-1252"
        );
        assert_eq!(
            html("&#0;|&#xD800;|&#x110000;|&#99999999999;"),
            "\u{FFFD}|\u{FFFD}|\u{FFFD}|\u{FFFD}"
        );
        assert_eq!(
            html("&bogus; &#; &#x; & alone &"),
            "&bogus; &#; &#x; & alone &"
        );
        assert_eq!(html("AT&T"), "AT&T");
        assert_eq!(html("soft&shy;hyphen"), "softhyphen");
        assert_eq!(html("a&#1;b&#x7F;c"), "abc", "controls are dropped");
        assert_eq!(
            html("&#10;x&#32;&#32;y"),
            "x y",
            "references to white space collapse"
        );
        assert_eq!(html("&AElig;&yuml;&times;&divide;&nbsp;&iexcl;"), "Æÿ×÷ ¡");
    }

    #[test]
    fn latin1_entity_table_is_in_code_point_order() {
        assert_eq!(legacy_entity("nbsp"), Some('\u{A0}'));
        assert_eq!(legacy_entity("sect"), Some('§'));
        assert_eq!(legacy_entity("frac12"), Some('½'));
        assert_eq!(legacy_entity("Agrave"), Some('À'));
        assert_eq!(legacy_entity("times"), Some('×'));
        assert_eq!(legacy_entity("szlig"), Some('ß'));
        assert_eq!(legacy_entity("eacute"), Some('é'));
        assert_eq!(legacy_entity("divide"), Some('÷'));
        assert_eq!(legacy_entity("yuml"), Some('ÿ'));
        assert_eq!(named_entity("Yuml"), Some('Ÿ'));
        assert_eq!(legacy_entity("Yuml"), None);
    }

    #[test]
    fn html_links_and_images() {
        assert_eq!(
            html("see <a href=\"https://example.com/x?a=1&amp;b=2\">here</a>."),
            "see here (https://example.com/x?a=1&b=2)."
        );
        assert_eq!(
            html("<a href='https://contoso.com'>https://contoso.com</a>"),
            "https://contoso.com"
        );
        assert_eq!(
            html("<a href=\"mailto:joe@contoso.com\">joe@contoso.com</a>"),
            "joe@contoso.com"
        );
        assert_eq!(html("<a href=\"https://e.test\"></a>"), "https://e.test");
        assert_eq!(html("<a href=\"javascript:alert(1)\">click</a>"), "click");
        assert_eq!(html("<a name=x>anchor</a>"), "anchor");
        assert_eq!(
            html("smile <img src=\"e.png\" alt=\":-)\"> ok"),
            "smile :-) ok"
        );
        assert_eq!(html("<span title=\"a>b\" data-x='<p>'>x</span>"), "x");
        assert_eq!(
            html("<a href=\"https://e.test"),
            "",
            "unterminated attribute"
        );
    }

    #[test]
    fn html_literal_angle_brackets() {
        assert_eq!(html("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(html("a <3 b"), "a <3 b");
        assert_eq!(html("a </ b"), "a </ b");
        assert_eq!(html("end <"), "end <");
    }

    #[test]
    fn html_non_ascii() {
        assert_eq!(html("<b>中文</b> café 😀"), "中文 café 😀");
        // `<` before a non-ASCII letter is text (HTML tokenizer rule).
        assert_eq!(html("<中文>x</中文>"), "<中文>x</中文>");
        assert_eq!(
            plain_text("text/html; charset=windows-1252", b"<i>caf\xE9</i>").unwrap(),
            "café"
        );
    }

    #[test]
    fn hostile_html_is_linear_and_bounded() {
        let deep = "<div>".repeat(12_000);
        assert_eq!(html(&deep), "");
        let deep = format!("{}x{}", "<b><i>".repeat(8000), "</i></b>".repeat(2000));
        assert_eq!(html(&deep), "x");
        let tags = "<a ".repeat(20_000);
        assert_eq!(html(&tags), "");
        let comments = "<!--".repeat(15_000);
        assert_eq!(html(&comments), "");
        let amps = "&#x".repeat(20_000);
        assert_eq!(html(&amps).len(), 3 * 20_000);
        let scripts = "<script>".repeat(7000);
        assert_eq!(html(&scripts), "");
        let html_in = "<p>a&amp;b</p>".repeat(4000);
        let out = html(&html_in);
        assert!(out.len() <= html_in.len());
    }
}
