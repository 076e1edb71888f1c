//! Span-aware YAML reading: maps JSON-pointer paths to the line and column of the node.
//!
//! serde_yaml (which parses the config) keeps no per-node positions, so a second pass with
//! yaml-rust2's marked event parser records where each mapping key and value starts. Schema
//! and semantic errors carry JSON pointers; this map turns them into `file:line:col`.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

/// Where a node is: the key that introduces it (in a mapping) and the value itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub key: Option<Pos>,
    pub value: Pos,
}

/// JSON pointer → span, for every node of the first document.
#[derive(Debug, Default, Clone)]
pub struct SpanMap {
    map: HashMap<String, Span>,
    duplicates: Vec<(String, Pos)>,
    non_finite: Vec<(String, Pos, String)>,
    merges: Vec<(String, Pos)>,
}

impl SpanMap {
    /// Reads `text` (which serde_yaml has read). yaml-rust2 refuses a few forms serde_yaml
    /// takes (a tab after `key:`), so a refused text is read again with its tabs as spaces
    /// (the columns stay the same); what is still refused is the error, with its position.
    pub fn build(text: &str) -> Result<SpanMap, (Pos, String)> {
        let read = |text: &str| {
            let mut b = Builder::default();
            Parser::new_from_str(text).load(&mut b, false).map(|()| b)
        };
        let b = read(text)
            .or_else(|_| read(&text.replace('\t', " ")))
            .map_err(|e| (Builder::pos(*e.marker()), e.info().to_string()))?;
        Ok(SpanMap { map: b.out, duplicates: b.duplicates, non_finite: b.non_finite, merges: b.merges })
    }

    /// Keys that appear twice in one mapping (YAML forbids it; serde_yaml would keep the
    /// last silently): the pointer of the key and where the repeat is.
    pub fn duplicates(&self) -> &[(String, Pos)] {
        &self.duplicates
    }

    /// Values written as YAML's not-a-number or infinity (`.nan`, `-.inf`, …): the YAML
    /// reader takes them for floats, which JSON (and so the schemas) cannot hold, and they
    /// would reach validation as null. Pointer, position and the text as written.
    pub fn non_finite(&self) -> &[(String, Pos, String)] {
        &self.non_finite
    }

    /// YAML merge keys (a plain `<<` key): the pointer of each and where it is, in order.
    pub fn merges(&self) -> &[(String, Pos)] {
        &self.merges
    }

    /// The span of exactly this pointer.
    pub fn get(&self, pointer: &str) -> Option<Span> {
        self.map.get(pointer).copied()
    }

    /// Position for a diagnostic about `pointer`: the key if the node sits in a mapping (so
    /// "unknown field" and "wrong type" point at the line a person reads), else the value.
    /// Falls back to the nearest ancestor that exists, then to 1:1.
    pub fn locate(&self, pointer: &str) -> Pos {
        if pointer.is_empty() {
            // Whole-file problems point at the file's start.
            return Pos { line: 1, col: 1 };
        }
        let mut p = pointer.to_string();
        loop {
            if let Some(s) = self.map.get(&p) {
                return s.key.unwrap_or(s.value);
            }
            match p.rfind('/') {
                Some(i) => p.truncate(i),
                None => return Pos { line: 1, col: 1 },
            }
        }
    }

    /// Position of the value (not the key) at `pointer`, with the same fallback as `locate`.
    pub fn locate_value(&self, pointer: &str) -> Pos {
        match self.map.get(pointer) {
            Some(s) => s.value,
            None => self.locate(pointer),
        }
    }
}

/// Escapes one JSON-pointer segment (RFC 6901).
pub fn escape(seg: &str) -> String {
    seg.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Map { path: String, pending_key: Option<(String, Pos)>, seen: std::collections::HashSet<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    out: HashMap<String, Span>,
    duplicates: Vec<(String, Pos)>,
    non_finite: Vec<(String, Pos, String)>,
    merges: Vec<(String, Pos)>,
    done: bool,
}

/// YAML 1.2 core schema's spellings of not-a-number and infinity (serde_yaml's `parse_f64`),
/// and numbers in its float form too large for a float (`1e400`: serde_yaml then keeps the
/// text, and the schema said "found string").
fn is_non_finite(s: &str) -> bool {
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    let numeral = unsigned.starts_with(|c: char| c.is_ascii_digit() || c == '.')
        && unsigned.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    matches!(s, ".nan" | ".NaN" | ".NAN")
        || matches!(unsigned, ".inf" | ".Inf" | ".INF")
        || (numeral && s.parse::<f64>().is_ok_and(f64::is_infinite))
}

impl Builder {
    fn pos(m: Marker) -> Pos {
        // yaml-rust2 markers: line is 1-based, column 0-based.
        Pos { line: m.line(), col: m.col() + 1 }
    }

    /// Where the next value goes: its pointer and the key that introduced it.
    fn slot(&mut self) -> Option<(String, Option<Pos>)> {
        match self.stack.last_mut() {
            None => Some((String::new(), None)),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}/{next}");
                *next += 1;
                Some((p, None))
            }
            Some(Frame::Map { path, pending_key, .. }) => {
                let (k, kpos) = pending_key.take()?;
                Some((format!("{path}/{}", escape(&k)), Some(kpos)))
            }
        }
    }

    /// In a mapping with no pending key, a scalar is a key.
    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { pending_key: None, .. }))
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.done {
            return;
        }
        let pos = Self::pos(mark);
        match ev {
            Event::Scalar(s, style, _, tag) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { pending_key, path, seen }) = self.stack.last_mut() {
                        if !seen.insert(s.clone()) {
                            self.duplicates.push((format!("{path}/{}", escape(&s)), pos));
                        }
                        if s == "<<" && style == TScalarStyle::Plain && tag.is_none() {
                            self.merges.push((format!("{path}/<<"), pos));
                        }
                        *pending_key = Some((s, pos));
                        // A block mapping's start mark sits oddly; its first key is where a
                        // reader sees the mapping begin.
                        if let Some(span) = self.out.get_mut(path.as_str()) {
                            if span.key.is_none() && (span.value.line, span.value.col) > (pos.line, pos.col) {
                                span.value = pos;
                            }
                        }
                    }
                } else if let Some((p, key)) = self.slot() {
                    // Read as a float: untagged and plain, or tagged `!!float` in any style
                    // (`!!str .nan` is text).
                    let float = match &tag {
                        None => style == TScalarStyle::Plain,
                        Some(t) => format!("{}{}", t.handle, t.suffix) == "tag:yaml.org,2002:float",
                    };
                    if float && is_non_finite(&s) {
                        self.non_finite.push((p.clone(), pos, s));
                    }
                    self.out.insert(p, Span { key, value: pos });
                }
            }
            Event::Alias(_) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut() {
                        *pending_key = Some(("*alias".into(), pos));
                    }
                } else if let Some((p, key)) = self.slot() {
                    self.out.insert(p, Span { key, value: pos });
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                // A complex (non-scalar) key is not valid config; track it under a dummy key.
                if self.expecting_key() {
                    if let Some(Frame::Map { pending_key, .. }) = self.stack.last_mut() {
                        *pending_key = Some(("*complex".into(), pos));
                    }
                }
                let (path, key) = self.slot().unwrap_or_default();
                self.out.insert(path.clone(), Span { key, value: pos });
                self.stack.push(if is_map {
                    Frame::Map { path, pending_key: None, seen: Default::default() }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::DocumentEnd => self.done = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_pointers_to_positions() {
        let text = "kind: channels\nchannels:\n  - id: a\n    timeouts:\n      connect_ms: 5\n  - id: b\n";
        let m = SpanMap::build(text).unwrap();
        assert_eq!(m.get("/kind").unwrap().key, Some(Pos { line: 1, col: 1 }));
        assert_eq!(m.get("/kind").unwrap().value, Pos { line: 1, col: 7 });
        assert_eq!(m.locate("/channels/0/id"), Pos { line: 3, col: 5 });
        assert_eq!(m.locate("/channels/0/timeouts/connect_ms"), Pos { line: 5, col: 7 });
        assert_eq!(m.locate_value("/channels/0/timeouts/connect_ms"), Pos { line: 5, col: 19 });
        assert_eq!(m.locate("/channels/1/id"), Pos { line: 6, col: 5 });
        // Unknown pointers fall back to the nearest ancestor.
        assert_eq!(m.locate("/channels/1/nope"), Pos { line: 6, col: 5 });
    }

    #[test]
    fn finds_duplicate_keys() {
        let m = SpanMap::build("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n").unwrap();
        let d: Vec<&str> = m.duplicates().iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(d, ["/b/c", "/a"]);
        assert_eq!(m.duplicates()[1].1, Pos { line: 5, col: 1 });
    }

    #[test]
    fn flow_style_and_escapes() {
        let m = SpanMap::build("a: {b/c: [1, 2]}\n").unwrap();
        assert_eq!(m.locate_value("/a/b~1c/1"), Pos { line: 1, col: 14 });
    }
}
