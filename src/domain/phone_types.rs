//! Which region a national number belongs to and what type it is, decided exactly as the `phonenumber`
//! crate's `PhoneNumber::metadata`, `is_valid` and `number_type` decide it, from the same metadata, but
//! with the patterns compiled once per region and kept here.
//!
//! Why: the crate looks every pattern up in one shared LRU cache behind a global mutex, keyed by the
//! pattern's source text, so each match SipHashes and compares the pattern (the US fixed-line and
//! mobile patterns are about 2 KB each), and a +1 number is typed twice (once to find its region). In
//! a callgrind profile of a wrong `verifyUser` that was 32% of the server's instructions. Here a match
//! is one anchored regex search and no lock.
//!
//! Parity with the crate is a property test (`domain::phone::props`) over random numbers of 18 country
//! codes, single- and multi-region ones.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use phonenumber::Type;
use phonenumber::country::Id;
use phonenumber::metadata::{DATABASE, Descriptor, Metadata};
use regex::{Regex, RegexBuilder};

/// The crate matches a descriptor with `find` and accepts a match that starts at 0 (not necessarily
/// ending at the end): the same as an anchored-at-start search. Patterns are compiled as the crate
/// compiles them (`ignore_whitespace`), but without Unicode classes: what is matched is always the
/// ASCII digits of a national number, where `\d` means the same. Compiled so, the patterns of every
/// region (compiled lazily, per region, as numbers of that region arrive) take about 25 MB, against
/// 120 MB with Unicode classes (measured by parsing numbers of every country code).
fn anchored(source: &str) -> Option<Regex> {
    RegexBuilder::new(&format!("^(?:{source})"))
        .ignore_whitespace(true)
        .unicode(false)
        .build()
        .ok()
}

struct Pattern {
    descriptor: &'static Descriptor,
    /// None only if our compilation failed (never seen): then the crate's own match is used.
    regex: Option<Regex>,
}

impl Pattern {
    fn new(descriptor: &'static Descriptor) -> Self {
        Pattern {
            descriptor,
            regex: anchored(descriptor.national_number().as_str()),
        }
    }

    fn is_match(&self, value: &str) -> bool {
        let Some(regex) = &self.regex else {
            return self.descriptor.is_match(value);
        };
        let lengths = self.descriptor.possible_length();
        (lengths.is_empty() || lengths.contains(&(value.len() as u16))) && regex.is_match(value)
    }
}

/// One region's patterns, in the order the crate's `number_type` tries them.
struct Region {
    general: Pattern,
    /// Premium rate, toll free, shared cost, VoIP, personal, pager, UAN, voicemail.
    special: Vec<(Type, Pattern)>,
    fixed_line: Option<Pattern>,
    mobile: Option<Pattern>,
    fixed_line_is_mobile: bool,
    leading_digits: Option<Regex>,
    /// The international dialling prefix (IDD), anchored; None when the region has none.
    international_prefix: Option<Regex>,
}

impl Region {
    fn new(meta: &'static Metadata) -> Self {
        let d = meta.descriptors();
        let special = [
            (Type::PremiumRate, d.premium_rate()),
            (Type::TollFree, d.toll_free()),
            (Type::SharedCost, d.shared_cost()),
            (Type::Voip, d.voip()),
            (Type::PersonalNumber, d.personal_number()),
            (Type::Pager, d.pager()),
            (Type::Uan, d.uan()),
            (Type::Voicemail, d.voicemail()),
        ]
        .into_iter()
        .filter_map(|(t, desc)| desc.map(|desc| (t, Pattern::new(desc))))
        .collect();
        Region {
            general: Pattern::new(d.general()),
            special,
            fixed_line: d.fixed_line().map(Pattern::new),
            mobile: d.mobile().map(Pattern::new),
            fixed_line_is_mobile: d.fixed_line().map(|x| x.national_number().as_str())
                == d.mobile().map(|x| x.national_number().as_str()),
            leading_digits: meta.leading_digits().and_then(|r| anchored(r.as_str())),
            international_prefix: meta.international_prefix().and_then(|r| anchored(r.as_str())),
        }
    }

    fn starts_with_leading_digits(&self, meta: &Metadata, value: &str) -> Option<bool> {
        match (&self.leading_digits, meta.leading_digits()) {
            (Some(regex), _) => Some(regex.is_match(value)),
            (None, Some(theirs)) => Some(theirs.find(value).is_some_and(|m| m.start() == 0)),
            (None, None) => None,
        }
    }

    /// `phonenumber::validator::number_type`.
    fn number_type(&self, value: &str) -> Type {
        if !self.general.is_match(value) {
            return Type::Unknown;
        }
        if let Some((t, _)) = self.special.iter().find(|(_, p)| p.is_match(value)) {
            return *t;
        }
        if self.fixed_line.as_ref().is_some_and(|p| p.is_match(value)) {
            if self.fixed_line_is_mobile || self.mobile.as_ref().is_some_and(|p| p.is_match(value)) {
                return Type::FixedLineOrMobile;
            }
            return Type::FixedLine;
        }
        if self.mobile.as_ref().is_some_and(|p| p.is_match(value)) {
            return Type::Mobile;
        }
        Type::Unknown
    }
}

/// The regions a country code may stand for, resolved once.
enum Candidates {
    One(&'static Metadata),
    Several(Vec<&'static Metadata>),
}

struct Tables {
    /// By the address of the crate's (static) metadata entry: ids are not unique ("001").
    regions: HashMap<usize, OnceLock<Region>>,
    codes: HashMap<u16, Option<Candidates>>,
}

fn key(meta: &'static Metadata) -> usize {
    std::ptr::from_ref(meta) as usize
}

static TABLES: LazyLock<Tables> = LazyLock::new(|| {
    let db = &*DATABASE;
    let mut regions: HashMap<usize, OnceLock<Region>> =
        db.iter().map(|m| (key(m), OnceLock::new())).collect();
    let mut codes = HashMap::new();
    // Country codes have at most 3 digits. `iter()` holds one entry per region id, so the
    // non-geographic codes ("001": +800, +979, ...) are found through `by_code` only.
    for code in 1..1000u16 {
        let Some(ids) = db.region(&code) else { continue };
        for meta in db.by_code(&code).unwrap_or_default() {
            regions.entry(key(meta)).or_default();
        }
        // As `validator::source_for`: one region ("001": the first entry for the code), or each
        // region of the code in order.
        let candidates = if ids.len() == 1 {
            if ids[0] == "001" {
                db.by_code(&code)
                    .and_then(|m| m.into_iter().next())
                    .map(Candidates::One)
            } else if ids[0].parse::<Id>().is_ok() {
                db.by_id(ids[0]).map(Candidates::One)
            } else {
                None
            }
        } else {
            Some(Candidates::Several(
                ids.iter().filter_map(|id| db.by_id(*id)).collect(),
            ))
        };
        codes.insert(code, candidates);
    }
    Tables { regions, codes }
});

fn region(meta: &'static Metadata) -> Option<&'static Region> {
    TABLES
        .regions
        .get(&key(meta))
        .map(|cell| cell.get_or_init(|| Region::new(meta)))
}

/// The region of national number `value` (digits, no leading zeros unless the caller means them)
/// under country code `code`, as `PhoneNumber::metadata` finds it, and the number's type there, as
/// `validator::number_type` gives it. One type match: where finding the region already typed the
/// number, that type is kept.
pub fn classify(code: u16, value: &str) -> Option<(&'static Metadata, Type)> {
    let typed = |meta: &'static Metadata| (meta, number_type(meta, value));
    match TABLES.codes.get(&code)?.as_ref()? {
        Candidates::One(meta) => Some(typed(meta)),
        Candidates::Several(metas) => metas.iter().copied().find_map(|meta| {
            let r = region(meta)?;
            match r.starts_with_leading_digits(meta, value) {
                Some(true) => Some(typed(meta)),
                Some(false) => None,
                None => {
                    let t = r.number_type(value);
                    (t != Type::Unknown).then_some((meta, t))
                }
            }
        }),
    }
}

/// `validator::number_type(meta, value)`.
fn number_type(meta: &'static Metadata, value: &str) -> Type {
    region(meta).map_or(Type::Unknown, |r| r.number_type(value))
}

/// What `international_hint` worked out for "+" + digits.
pub struct Hint<'a> {
    /// The region to pass to `phonenumber::parse` as the country.
    pub region: Id,
    pub code: u16,
    /// The digits after the country code, without leading zeros.
    pub national: &'a str,
    pub meta: &'static Metadata,
    pub number_type: Type,
}

/// The region `phonenumber::parse(None, "+" + digits)` would settle on for an international number
/// (it looks it up with `source_for` through its pattern cache), so that the caller can pass it to
/// `parse` as the country: the crate then takes that region's metadata directly, and the result is
/// the same. The classification comes along, for the caller to reuse when the parsed national number
/// is these digits. None when there is no such region id (no region matches, or a non-geographic
/// "001" code): the caller then lets the crate decide.
pub fn international_hint(digits: &str) -> Option<Hint<'_>> {
    // Country codes form a prefix code of 1 to 3 digits; the crate takes the shortest that exists.
    let (code, national) = (1..=3.min(digits.len())).find_map(|len| {
        let code: u16 = digits[..len].parse().ok()?;
        TABLES.codes.contains_key(&code).then(|| (code, &digits[len..]))
    })?;
    let national = national.trim_start_matches('0');
    let (meta, number_type) = classify(code, national)?;
    // Given a country, the crate also strips that country's IDD when the digits after "+" start with
    // it; without one it does not. Where that could differ, let the crate decide.
    let compiled = region(meta)?;
    match (&compiled.international_prefix, meta.international_prefix()) {
        (Some(idd), _) if idd.is_match(digits) => return None,
        (None, Some(_)) => return None,
        _ => {}
    }
    Some(Hint {
        region: meta.id().parse().ok()?,
        code,
        national,
        meta,
        number_type,
    })
}
