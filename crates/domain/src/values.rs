//! Validated value types. A value of one of these types is always valid:
//! each is built through a constructor that checks it, and deserialising
//! goes through the same check.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a raw input is not a valid value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValueError {
    /// Which value was refused, e.g. `email`.
    pub field: &'static str,
    /// Why, in words fit for an API client.
    pub reason: String,
}

impl ValueError {
    fn new(field: &'static str, reason: impl Into<String>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_type!(
    /// Identifies an account (buyer, seller or admin).
    AccountId
);
id_type!(
    /// Identifies a listing.
    ListingId
);
id_type!(
    /// Identifies an order.
    OrderId
);
id_type!(
    /// Identifies a review.
    ReviewId
);
id_type!(
    /// Identifies a payment intent (one deposit's charge at the provider;
    /// the provider's idempotency key).
    PaymentIntentId
);

/// The account that collects the marketplace's fees. Its wallet is where
/// fees go, so money is conserved: every wallet plus every escrow plus this
/// account's balance equals every deposit.
pub const FEE_ACCOUNT_ID: AccountId =
    AccountId(Uuid::from_u128(0x6d6b_7466_6565_4000_8000_0000_0000_0001));

/// A role an account holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    /// Buys listings.
    Buyer,
    /// Sells listings.
    Seller,
    /// Operates the marketplace (moderation, audit).
    Admin,
}

/// The account acting on a command, as looked up from its credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Who.
    pub account_id: AccountId,
    /// With which roles.
    pub roles: Vec<Role>,
}

impl Actor {
    /// Whether the actor holds `role`.
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

macro_rules! validated_string {
    ($(#[$m:meta])* $name:ident, $check:expr) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates (and normalises) a raw value.
            pub fn parse(raw: &str) -> Result<Self, ValueError> {
                let check: fn(&str) -> Result<String, ValueError> = $check;
                check(raw).map(Self)
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValueError;
            fn try_from(s: String) -> Result<Self, ValueError> {
                Self::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

fn bounded(field: &'static str, raw: &str, min: usize, max: usize) -> Result<String, ValueError> {
    let s = raw.trim();
    let n = s.chars().count();
    if n < min {
        return Err(ValueError::new(
            field,
            format!("must have at least {min} character(s)"),
        ));
    }
    if n > max {
        return Err(ValueError::new(
            field,
            format!("must have at most {max} characters"),
        ));
    }
    check_text(field, s, Lines::Many)?;
    Ok(s.to_owned())
}

/// Whether a text may span lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lines {
    /// One line: no control character at all.
    One,
    /// Free text: line feeds, carriage returns and tabs are allowed.
    Many,
}

/// The reason every text check gives, so clients see one wording.
pub const TEXT_REFUSED: &str =
    "must not contain control characters (NUL included) or Unicode bidirectional overrides";

/// Whether `c` may never appear in a text input: a control character (NUL
/// included; line breaks and tabs only where `lines` allows them), or a
/// Unicode bidirectional embedding, override or isolate (U+202A–U+202E,
/// U+2066–U+2069), which can make a text display differently from what it
/// is ("Trojan Source").
pub fn is_refused_char(c: char, lines: Lines) -> bool {
    let allowed_control = lines == Lines::Many && matches!(c, '\n' | '\r' | '\t');
    (c.is_control() && !allowed_control)
        || ('\u{202A}'..='\u{202E}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// Checks one text input for [refused characters](is_refused_char).
/// Every validated string type runs it, and the API runs it over every
/// string argument and variable, so no such character reaches the store
/// (PostgreSQL cannot even store NUL in `jsonb`).
pub fn check_text(field: &'static str, s: &str, lines: Lines) -> Result<(), ValueError> {
    if s.chars().any(|c| is_refused_char(c, lines)) {
        return Err(ValueError::new(field, TEXT_REFUSED));
    }
    Ok(())
}

validated_string!(
    /// An email address, trimmed and lower-cased so that uniqueness is
    /// checked on the normalised form.
    Email,
    |raw| {
        check_text("email", raw, Lines::One)?;
        let s = raw.trim().to_lowercase();
        let valid = s.len() <= 254
            && !s.chars().any(char::is_whitespace)
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && local.len() <= 64
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            });
        if valid {
            Ok(s)
        } else {
            Err(ValueError::new("email", "is not a valid email address"))
        }
    }
);

validated_string!(
    /// A person's or shop's public name: 1 to 100 characters.
    DisplayName,
    |raw| bounded("displayName", raw, 1, 100)
);

validated_string!(
    /// A listing title: 1 to 200 characters.
    Title,
    |raw| bounded("title", raw, 1, 200)
);

validated_string!(
    /// A listing description: up to 10,000 characters.
    Description,
    |raw| bounded("description", raw, 0, 10_000)
);

validated_string!(
    /// A catalogue category: 1 to 64 characters, lower-cased.
    Category,
    |raw| bounded("category", raw, 1, 64).map(|s| s.to_lowercase())
);

validated_string!(
    /// One tag: 1 to 32 characters, lower-cased.
    Tag,
    |raw| bounded("tags", raw, 1, 32).map(|s| s.to_lowercase())
);

validated_string!(
    /// The sha256 of a digital asset's content: 64 hex characters, lower-cased.
    ContentHash,
    |raw| {
        let s = raw.trim().to_lowercase();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(s)
        } else {
            Err(ValueError::new("contentHash", "must be a sha256 digest: 64 hex characters"))
        }
    }
);

validated_string!(
    /// A media type such as `application/pdf` (`type/subtype`, lower-cased,
    /// parameters dropped): what a digital asset is served as.
    ContentType,
    |raw| {
        let s = raw.split(';').next().unwrap_or("").trim().to_lowercase();
        let valid = s.len() <= 127
            && s.split_once('/').is_some_and(|(t, sub)| {
                let token = |p: &str| {
                    !p.is_empty()
                        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
                };
                token(t) && token(sub)
            });
        if valid {
            Ok(s)
        } else {
            Err(ValueError::new("contentType", "must be a media type such as application/pdf"))
        }
    }
);

validated_string!(
    /// An ISO 4217-style currency code: three upper-case letters.
    Currency,
    |raw| {
        let s = raw.trim().to_uppercase();
        if s.len() == 3 && s.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(s)
        } else {
            Err(ValueError::new("currencyCode", "must be three letters, e.g. EUR"))
        }
    }
);

impl Currency {
    /// How many decimal places its minor unit has (2 for EUR and USD).
    pub fn exponent(&self) -> u32 {
        match self.0.as_str() {
            "JPY" | "KRW" | "CLP" | "ISK" | "VND" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
            _ => 2,
        }
    }
}

/// An argon2 password hash in PHC string form. Never the password itself;
/// its `Debug` is redacted so it cannot end up in a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Wraps a PHC string (`$argon2id$…`).
    pub fn from_phc(phc: String) -> Result<Self, ValueError> {
        if phc.starts_with("$argon2") {
            Ok(Self(phc))
        } else {
            Err(ValueError::new(
                "password",
                "hash is not an argon2 PHC string",
            ))
        }
    }

    /// The PHC string, for verification.
    pub fn as_phc(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// A personal field of an event (DESIGN.md §6b): its value, or `Erased`
/// once the data key of the person it belongs to was destroyed.
///
/// The log stores such a field sealed under that person's data key (see
/// `marketplace-event-schemas`' `personal` module); a decoded event
/// carries the opened value, and the field reads as JSON `null`, hence
/// `Erased`, once the key is gone. Decisions never depend on a personal
/// field being known, so replaying an erased account decides the same.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Personal<T> {
    /// The value, readable.
    Known(T),
    /// Crypto-shredded: the key it was sealed under no longer exists.
    Erased,
}

impl<T> Personal<T> {
    /// The value, if it was not erased.
    pub fn known(&self) -> Option<&T> {
        match self {
            Personal::Known(v) => Some(v),
            Personal::Erased => None,
        }
    }

    /// The value, if it was not erased.
    pub fn into_known(self) -> Option<T> {
        match self {
            Personal::Known(v) => Some(v),
            Personal::Erased => None,
        }
    }

    /// Whether the value was erased.
    pub fn is_erased(&self) -> bool {
        matches!(self, Personal::Erased)
    }
}

impl<T> From<T> for Personal<T> {
    fn from(v: T) -> Self {
        Personal::Known(v)
    }
}

impl<T: Serialize> Serialize for Personal<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Personal::Known(v) => v.serialize(s),
            Personal::Erased => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Personal<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Personal::Known(v),
            None => Personal::Erased,
        })
    }
}

/// An amount of money: integer minor units plus a currency. Never floating point.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    /// Amount in minor units (cents for EUR).
    pub minor: i64,
    /// The currency.
    pub currency: Currency,
}

impl Money {
    /// Parses an exact decimal string such as `"19.99"` in `currency`.
    /// Refuses more decimal places than the currency has, and anything that
    /// is not a plain decimal number.
    pub fn parse_decimal(amount: &str, currency: Currency) -> Result<Self, ValueError> {
        let err = |why: &str| ValueError::new("amount", why.to_owned());
        let s = amount.trim();
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err("must be a decimal number such as 19.99"));
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (digits.contains('.') && frac.is_empty()) {
            return Err(err("must be a decimal number such as 19.99"));
        }
        let exp = currency.exponent();
        if frac.len() > exp as usize {
            return Err(err(&format!(
                "{} allows at most {exp} decimal place(s)",
                currency.as_str()
            )));
        }
        let scale = 10i64.pow(exp);
        let whole: i64 = whole.parse().map_err(|_| err("is too large"))?;
        let frac_minor: i64 = if frac.is_empty() {
            0
        } else {
            let padded = format!("{frac:0<width$}", width = exp as usize);
            padded.parse().map_err(|_| err("is not a number"))?
        };
        let minor = whole
            .checked_mul(scale)
            .and_then(|m| m.checked_add(frac_minor))
            .ok_or_else(|| err("is too large"))?;
        Ok(Self {
            minor: if negative { -minor } else { minor },
            currency,
        })
    }

    /// The amount as an exact decimal string, e.g. `"19.99"`.
    pub fn to_decimal_string(&self) -> String {
        let exp = self.currency.exponent();
        if exp == 0 {
            return self.minor.to_string();
        }
        let scale = 10u64.pow(exp);
        let abs = self.minor.unsigned_abs();
        let sign = if self.minor < 0 { "-" } else { "" };
        format!(
            "{sign}{}.{:0width$}",
            abs / scale,
            abs % scale,
            width = exp as usize
        )
    }

    /// Whether the amount is above zero.
    pub fn is_positive(&self) -> bool {
        self.minor > 0
    }
}

impl Money {
    /// `self + other` in the same currency, or `None` on a currency
    /// mismatch or overflow.
    pub fn checked_add(&self, other: &Money) -> Option<Money> {
        (self.currency == other.currency).then_some(())?;
        Some(Money {
            minor: self.minor.checked_add(other.minor)?,
            currency: self.currency.clone(),
        })
    }

    /// `self × n`, or `None` on overflow.
    pub fn checked_times(&self, n: u32) -> Option<Money> {
        Some(Money {
            minor: self.minor.checked_mul(i64::from(n))?,
            currency: self.currency.clone(),
        })
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Money {
        Money { minor: 0, currency }
    }
}

/// The marketplace fee, in basis points (1/100 of a percent): 500 is 5%.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeeRate(u32);

impl FeeRate {
    /// The default fee: 5%.
    pub const DEFAULT: FeeRate = FeeRate(500);

    /// A fee of `bps` basis points, 0 to 10,000 (100%).
    pub fn from_basis_points(bps: u32) -> Result<Self, ValueError> {
        if bps <= 10_000 {
            Ok(Self(bps))
        } else {
            Err(ValueError::new("fee", "must be 0 to 10000 basis points"))
        }
    }

    /// The rate in basis points.
    pub fn basis_points(self) -> u32 {
        self.0
    }

    /// Splits `amount` into (payout, fee); the fee is rounded down to the
    /// minor unit, so payout + fee == amount exactly.
    pub fn split(self, amount: &Money) -> (Money, Money) {
        let fee = (i128::from(amount.minor) * i128::from(self.0) / 10_000) as i64;
        (
            Money {
                minor: amount.minor - fee,
                currency: amount.currency.clone(),
            },
            Money {
                minor: fee,
                currency: amount.currency.clone(),
            },
        )
    }
}

/// A review's star rating: 1 to 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "i64")]
pub struct Rating(u8);

impl Rating {
    /// Validates a raw rating.
    pub fn parse(raw: i64) -> Result<Self, ValueError> {
        u8::try_from(raw)
            .ok()
            .filter(|r| (1..=5).contains(r))
            .map(Self)
            .ok_or_else(|| ValueError::new("rating", "must be 1 to 5"))
    }

    /// The number of stars.
    pub fn stars(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Rating {
    type Error = ValueError;
    fn try_from(raw: i64) -> Result<Self, ValueError> {
        Self::parse(raw)
    }
}

impl From<Rating> for i64 {
    fn from(r: Rating) -> i64 {
        i64::from(r.0)
    }
}

validated_string!(
    /// A review's text: 1 to 2,000 characters.
    ReviewComment,
    |raw| bounded("comment", raw, 1, 2_000)
);

validated_string!(
    /// A payment provider's reference for a card or a charge (a token such
    /// as `tok_…`, a charge id): 1 to 128 printable ASCII characters. The
    /// marketplace never sees card numbers, only these.
    ProviderRef,
    |raw| {
        let s = raw.trim();
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ValueError::new(
                "providerRef",
                "must be 1 to 128 printable ASCII characters",
            ));
        }
        Ok(s.to_owned())
    }
);

validated_string!(
    /// The last four digits of a card, as the provider reports them.
    CardLast4,
    |raw| {
        let s = raw.trim();
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValueError::new("last4", "must be exactly four digits"));
        }
        Ok(s.to_owned())
    }
);

validated_string!(
    /// Why something was refused, rejected or cancelled: 1 to 500 characters.
    Reason,
    |raw| bounded("reason", raw, 1, 500)
);

impl Reason {
    /// A reason the system itself gives; must be 1 to 500 characters.
    pub fn fixed(text: &'static str) -> Self {
        debug_assert!(Self::parse(text).is_ok(), "invalid fixed reason");
        Self(text.to_owned())
    }
}

validated_string!(
    /// A carrier's tracking code: 1 to 64 characters.
    TrackingCode,
    |raw| bounded("trackingCode", raw, 1, 64)
);

/// Tags of a listing: at most 20, lower-cased, without duplicates, in the
/// order first given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<Tag>", into = "Vec<Tag>")]
pub struct Tags(Vec<Tag>);

impl Tags {
    /// Most tags a listing may carry.
    pub const MAX: usize = 20;

    /// Validates a list of raw tags.
    pub fn parse<'a>(raw: impl IntoIterator<Item = &'a str>) -> Result<Self, ValueError> {
        let tags = raw
            .into_iter()
            .map(Tag::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Self::try_from(tags)
    }

    /// The tags.
    pub fn as_slice(&self) -> &[Tag] {
        &self.0
    }
}

impl TryFrom<Vec<Tag>> for Tags {
    type Error = ValueError;
    fn try_from(tags: Vec<Tag>) -> Result<Self, ValueError> {
        let mut out: Vec<Tag> = Vec::with_capacity(tags.len());
        for t in tags {
            if !out.contains(&t) {
                out.push(t);
            }
        }
        if out.len() > Self::MAX {
            return Err(ValueError::new(
                "tags",
                format!("at most {} tags", Self::MAX),
            ));
        }
        Ok(Self(out))
    }
}

impl From<Tags> for Vec<Tag> {
    fn from(t: Tags) -> Self {
        t.0
    }
}

/// A count of physical units, never negative.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Quantity(pub u32);

impl Quantity {
    /// Most units accepted in one command.
    pub const MAX: u32 = 1_000_000;

    /// Validates a raw count from an API: 0 to [`Quantity::MAX`].
    pub fn parse(raw: i64) -> Result<Self, ValueError> {
        u32::try_from(raw)
            .ok()
            .filter(|q| *q <= Self::MAX)
            .map(Self)
            .ok_or_else(|| {
                ValueError::new("quantity", format!("must be between 0 and {}", Self::MAX))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("eur").expect("valid")
    }

    #[test]
    fn normalises_emails_and_refuses_malformed_ones() {
        assert_eq!(
            Email::parse("  Ada@Example.COM ").expect("valid").as_str(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "ada@.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_nul_control_characters_and_bidi_overrides_in_every_text() {
        for bad in [
            "a\u{0}b@example.com",
            "ada@exa\u{202E}mple.com",
            "ada\n@x.com",
        ] {
            let e = Email::parse(bad).expect_err(bad);
            assert_eq!(e.field, "email", "{bad:?}");
        }
        for bad in [
            "Brass\u{0}lamp",
            "lamp\u{7}",
            "\u{2066}lamp\u{2069}",
            "a\u{202D}b",
        ] {
            assert_eq!(
                Title::parse(bad),
                Err(ValueError::new("title", TEXT_REFUSED)),
                "{bad:?}"
            );
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
            assert!(Category::parse(bad).is_err(), "{bad:?}");
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
            assert!(ReviewComment::parse(bad).is_err(), "{bad:?}");
            assert!(Description::parse(bad).is_err(), "{bad:?}");
        }
        // Free text keeps its line breaks and tabs; right-to-left text
        // itself (not an override) is fine.
        assert!(Description::parse("line one\r\nline\ttwo").is_ok());
        assert!(Title::parse("مصباح نحاسي").is_ok());
        assert!(!is_refused_char('\n', Lines::Many));
        assert!(is_refused_char('\n', Lines::One));
    }

    #[test]
    fn parses_exact_decimal_money_without_floating_point() {
        assert_eq!(
            Money::parse_decimal("19.99", eur()).expect("valid").minor,
            1999
        );
        assert_eq!(
            Money::parse_decimal("19.9", eur()).expect("valid").minor,
            1990
        );
        assert_eq!(Money::parse_decimal("7", eur()).expect("valid").minor, 700);
        assert_eq!(
            Money::parse_decimal("0.10", eur())
                .expect("valid")
                .to_decimal_string(),
            "0.10"
        );
        let yen = Currency::parse("JPY").expect("valid");
        assert_eq!(
            Money::parse_decimal("500", yen.clone())
                .expect("valid")
                .to_decimal_string(),
            "500"
        );
        assert!(Money::parse_decimal("5.5", yen).is_err());
        for bad in [
            "",
            "1.999",
            "abc",
            "1e3",
            ".5",
            "5.",
            "1,00",
            "99999999999999999999",
        ] {
            assert!(Money::parse_decimal(bad, eur()).is_err(), "{bad:?}");
        }
        assert_eq!(
            Money::parse_decimal("-1.50", eur()).expect("valid").minor,
            -150
        );
    }

    #[test]
    fn refuses_a_content_hash_that_is_not_sha256_hex() {
        assert!(ContentHash::parse(&"ab".repeat(32)).is_ok());
        assert!(ContentHash::parse(&"ab".repeat(31)).is_err());
        assert!(ContentHash::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn deduplicates_tags_and_caps_their_number() {
        let tags = Tags::parse(["Retro", "retro", "games"]).expect("valid");
        assert_eq!(tags.as_slice().len(), 2);
        let many: Vec<String> = (0..21).map(|i| format!("t{i}")).collect();
        assert!(Tags::parse(many.iter().map(String::as_str)).is_err());
    }

    #[test]
    fn password_hashes_never_print() {
        let h = PasswordHash::from_phc("$argon2id$v=19$secret".into()).expect("valid");
        assert!(!format!("{h:?}").contains("secret"));
    }

    #[test]
    fn deserialising_runs_the_same_validation() {
        assert!(serde_json::from_str::<Email>("\"not-an-email\"").is_err());
        assert!(serde_json::from_str::<Quantity>("5").is_ok());
    }
}
