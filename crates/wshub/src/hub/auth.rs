//! Connection-token authentication for the hub (`wshub serve`).
//!
//! A client proves who it is with a JWT *connection token* issued by the
//! application's backend (or by `wshub token` for testing). This module:
//!
//! - describes where the verification keys come from ([`AuthConfig`]) and
//!   checks that configuration up front ([`AuthConfig::validate`]);
//! - verifies tokens ([`Verifier::verify`]) and yields their [`Claims`]:
//!   the user id (`sub`), presence `info`, and the channels the token grants
//!   subscribe (`channels`) and publish (`publish`) permission for;
//! - mints tokens ([`Minter`], [`ClaimsBuilder`]) for the CLI and tests;
//! - reports failures as [`AuthError`], whose [`AuthError::client_message`] is
//!   what the client protocol may tell the client: `"token expired"` (get a
//!   fresh token and reconnect/refresh) or `"unauthorized"` (anything else;
//!   nothing more is revealed).
//!
//! # Algorithms and keys
//!
//! Exactly three algorithms exist here, each tied to one kind of key:
//! HS256 to [`AuthConfig::hmac_secret`], RS256 to
//! [`AuthConfig::rsa_public_key_pem`], ES256 (P-256) to
//! [`AuthConfig::ec_public_key_pem`]. A token is accepted only if its header's
//! `alg` is one of those three *and* the matching key is configured; it is then
//! checked against that key alone. So `alg: none` is always refused, and an
//! HS256 token can never be checked with an RSA or EC public key used as an
//! HMAC secret (the "algorithm confusion" attack): HS256 only ever uses the
//! configured shared secret. Tokens with a `crit` header are refused (no
//! extensions are understood); `kid`, `jku`, `x5u`, `jwk` are ignored (keys
//! come from configuration only, never from the token).
//!
//! # Time
//!
//! Every time check takes `now` as a parameter ([`Verifier::verify`]) so that
//! tests need neither sleeping nor a mocked clock; [`Verifier::verify_now`]
//! uses the system clock. Times are whole seconds since the Unix epoch (JWT
//! "NumericDate"; fractional values are truncated). With leeway `L`
//! ([`AuthConfig::leeway`], default [`DEFAULT_LEEWAY`] = 30 s):
//!
//! - the token is expired once `now >= exp + L`;
//! - it is not yet valid while `now + L < nbf`;
//! - `iat` is parsed and exposed but not checked.
//!
//! `exp` is required unless [`AuthConfig::require_exp`] is turned off. A
//! connection must present a fresh token before its current one expires;
//! [`Claims::time_to_expiry`] tells the hub how long that is.
//!
//! # Order of checks
//!
//! Signature first (nothing in an unverified token is trusted), then `sub`,
//! `iss`, `aud`, `nbf` and `exp` last, so that [`AuthError::Expired`] — the one
//! error that tells the client to refresh — is only reported for a token that
//! is otherwise entirely valid.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Default clock-skew allowance for `exp` and `nbf`: 30 seconds.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);

/// Largest leeway [`AuthConfig::validate`] accepts: 5 minutes. A larger one
/// would make expiry meaningless for short-lived connection tokens.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Shortest HS256 secret accepted, in bytes (RFC 7518 §3.2: at least the
/// hash size, 256 bits).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// Longest token accepted, in bytes. Longer input is refused as malformed
/// before any decoding, so oversized tokens cost nothing to reject.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Default lifetime of a minted token ([`ClaimsBuilder::ttl`]): 1 hour.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// Where the hub's token-verification keys come from and which claims it
/// checks. Build with `AuthConfig { hmac_secret: Some(..), ..Default::default() }`.
///
/// Any combination of the three keys may be configured at once; each enables
/// exactly one algorithm (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Shared secret for HS256 tokens (enables HS256). At least
    /// [`MIN_HMAC_SECRET_LEN`] bytes, and not a PEM key. Default: `None`.
    pub hmac_secret: Option<String>,
    /// RSA public key in PEM (`-----BEGIN PUBLIC KEY-----` or
    /// `-----BEGIN RSA PUBLIC KEY-----`) for RS256 tokens (enables RS256).
    /// Default: `None`.
    pub rsa_public_key_pem: Option<String>,
    /// P-256 EC public key in PEM (`-----BEGIN PUBLIC KEY-----`) for ES256
    /// tokens (enables ES256). Default: `None`.
    pub ec_public_key_pem: Option<String>,
    /// If set, a token's `aud` (a string or a list of strings) must contain
    /// this value. If unset, `aud` is not checked. Default: `None`.
    pub audience: Option<String>,
    /// If set, a token's `iss` must equal this value. If unset, `iss` is not
    /// checked. Default: `None`.
    pub issuer: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`, whole seconds (sub-second
    /// parts are ignored); at most [`MAX_LEEWAY`]. Default: [`DEFAULT_LEEWAY`].
    pub leeway: Duration,
    /// Whether a client may connect without any token (as an anonymous user
    /// with an empty `sub` and no channel grants; see
    /// [`Verifier::authenticate`]). Default: `false`.
    pub allow_anonymous: bool,
    /// Whether tokens must carry `exp`. Turning this off lets tokens without
    /// `exp` live forever. Default: `true`.
    pub require_exp: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            hmac_secret: None,
            rsa_public_key_pem: None,
            ec_public_key_pem: None,
            audience: None,
            issuer: None,
            leeway: DEFAULT_LEEWAY,
            allow_anonymous: false,
            require_exp: true,
        }
    }
}

impl fmt::Debug for AuthConfig {
    // The secret never reaches logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field(
                "hmac_secret",
                &self.hmac_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("rsa_public_key_pem", &self.rsa_public_key_pem.is_some())
            .field("ec_public_key_pem", &self.ec_public_key_pem.is_some())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

impl AuthConfig {
    /// Checks the configuration without keeping anything: every configured
    /// key parses, the secret is long enough, the leeway is small enough, and
    /// at least one key is configured unless anonymous connections are
    /// allowed. Errors are [`AuthError::Config`] (naming the offending field)
    /// or [`AuthError::NoKey`].
    pub fn validate(&self) -> Result<(), AuthError> {
        Verifier::new(self).map(drop)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a token (or the auth configuration, or minting) was refused.
///
/// [`code`](AuthError::code) is a stable identifier for logs and metrics;
/// [`client_message`](AuthError::client_message) is all a client may be told.
/// `Display` gives operators the detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The token's `exp` (plus leeway) has passed. The client should obtain a
    /// fresh token.
    #[error("token expired")]
    Expired,
    /// The token's `nbf` (minus leeway) is still in the future.
    #[error("token not yet valid (nbf in the future)")]
    NotYetValid,
    /// The signature does not match the configured key for the token's
    /// algorithm (forged, tampered, or signed with another key).
    #[error("token signature is invalid")]
    BadSignature,
    /// An audience is configured and the token's `aud` lacks it.
    #[error("token audience does not match")]
    BadAudience,
    /// An issuer is configured and the token's `iss` differs or is missing.
    #[error("token issuer does not match")]
    BadIssuer,
    /// The token's header names an algorithm that is not accepted: `none`,
    /// one this module does not support, or one whose key is not configured.
    /// Holds the header's `alg` (truncated to 32 characters).
    #[error("token algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    /// The token is not a well-formed JWT or a claim has the wrong type.
    /// Holds a short reason (never the token itself).
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token has no `sub`, or an empty one.
    #[error("token has no subject (sub)")]
    MissingSubject,
    /// The token has no `exp` and [`AuthConfig::require_exp`] is on.
    #[error("token has no expiry (exp)")]
    MissingExpiry,
    /// No token was presented and anonymous connections are off.
    #[error("no token presented and anonymous connections are not allowed")]
    MissingToken,
    /// No verification key is configured (from [`Verifier::new`] when
    /// anonymous connections are off too; from [`Verifier::verify`] when a
    /// token is presented to a key-less, anonymous-only verifier).
    #[error(
        "no token verification key configured (set an HMAC secret, an RSA or an EC public key)"
    )]
    NoKey,
    /// The auth configuration is invalid; the message names the field.
    #[error("invalid auth configuration: {0}")]
    Config(String),
    /// A signing key given to [`Minter`] is unusable, or signing failed.
    #[error("signing key error: {0}")]
    Key(String),
}

impl AuthError {
    /// Stable machine-readable identifier of the error kind, e.g.
    /// `"token_expired"`, `"bad_signature"`. Safe for logs and metrics labels;
    /// do not send it to clients (use [`client_message`](Self::client_message)).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::BadSignature => "bad_signature",
            AuthError::BadAudience => "bad_audience",
            AuthError::BadIssuer => "bad_issuer",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::Malformed(_) => "malformed_token",
            AuthError::MissingSubject => "missing_subject",
            AuthError::MissingExpiry => "missing_expiry",
            AuthError::MissingToken => "missing_token",
            AuthError::NoKey => "no_key",
            AuthError::Config(_) => "invalid_config",
            AuthError::Key(_) => "key_error",
        }
    }

    /// What the client protocol may tell the client: `"token expired"` for
    /// [`AuthError::Expired`] (the client should refresh its token), and
    /// `"unauthorized"` for everything else.
    pub fn client_message(&self) -> &'static str {
        if self.is_expired() {
            "token expired"
        } else {
            "unauthorized"
        }
    }

    /// Whether this is [`AuthError::Expired`], i.e. a fresh token would help.
    pub fn is_expired(&self) -> bool {
        matches!(self, AuthError::Expired)
    }
}

fn malformed(reason: &str) -> AuthError {
    AuthError::Malformed(reason.to_owned())
}

// ---------------------------------------------------------------------------
// Claims
// ---------------------------------------------------------------------------

/// The verified contents of a connection token.
///
/// Unknown claims are ignored. Obtain one from [`Verifier::verify`] or build
/// one with [`ClaimsBuilder`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Claims {
    /// User id. Non-empty in every verified token; empty only for anonymous
    /// connections ([`Verifier::authenticate`] with no token).
    #[serde(default)]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_numeric_date"
    )]
    pub exp: Option<u64>,
    /// Not-before, seconds since the Unix epoch.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_numeric_date"
    )]
    pub nbf: Option<u64>,
    /// Issued-at, seconds since the Unix epoch (informational; not checked).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "de_numeric_date"
    )]
    pub iat: Option<u64>,
    /// Audiences (`aud` may be a string or a list in the token; a single
    /// audience is written as a string).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "ser_aud",
        deserialize_with = "de_aud"
    )]
    pub aud: Vec<String>,
    /// Issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Free-form JSON attached to the connection's presence entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    /// Channels (or patterns, see [`channel_matches`]) this token grants
    /// subscribe permission for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Channels (or patterns) this token grants publish permission for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    /// Connection tags (string keys and values) that publications can be
    /// targeted by (a publish's tag filter).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Claims {
    /// Claims of an anonymous connection: empty `sub`, no expiry, no grants.
    pub fn anonymous() -> Claims {
        Claims {
            sub: String::new(),
            exp: None,
            nbf: None,
            iat: None,
            aud: Vec::new(),
            iss: None,
            info: None,
            channels: Vec::new(),
            publish: Vec::new(),
            tags: std::collections::BTreeMap::new(),
        }
    }

    /// Whether these are anonymous claims (empty `sub`).
    pub fn is_anonymous(&self) -> bool {
        self.sub.is_empty()
    }

    /// Time left until `exp` as seen at `now` (without leeway): the
    /// connection should present a fresh token within this. `None` if the
    /// token has no `exp`; zero if `exp` has passed.
    pub fn time_to_expiry(&self, now: SystemTime) -> Option<Duration> {
        let exp = Duration::from_secs(self.exp?);
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        Some(exp.checked_sub(now).unwrap_or(Duration::ZERO))
    }

    /// Whether the token grants subscribing to `channel` (some entry of
    /// [`channels`](Self::channels) matches it, see [`channel_matches`]).
    pub fn can_subscribe(&self, channel: &str) -> bool {
        self.channels.iter().any(|p| channel_matches(p, channel))
    }

    /// Whether the token grants publishing to `channel` (some entry of
    /// [`publish`](Self::publish) matches it, see [`channel_matches`]).
    pub fn can_publish(&self, channel: &str) -> bool {
        self.publish.iter().any(|p| channel_matches(p, channel))
    }
}

/// Whether a channel grant `pattern` covers `channel`.
///
/// A pattern ending in `*` matches every channel that starts with the part
/// before the `*` (`news:*` matches `news:` and `news:sport`, not `news`;
/// a lone `*` matches every channel). Any other pattern matches only the
/// identical channel name; `*` elsewhere than at the end has no special
/// meaning. An empty pattern matches nothing.
pub fn channel_matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => !pattern.is_empty() && pattern == channel,
    }
}

/// Accepts a JWT NumericDate: a non-negative integer or finite number of
/// seconds (fractions truncated).
fn de_numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let v: Option<serde_json::Number> = Option::deserialize(d)?;
    let Some(n) = v else { return Ok(None) };
    if let Some(u) = n.as_u64() {
        return Ok(Some(u));
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
        _ => Err(D::Error::custom(
            "time claim must be a non-negative number of seconds",
        )),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

fn de_aud<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

fn ser_aud<S: Serializer>(aud: &[String], s: S) -> Result<S::Ok, S::Error> {
    match aud {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

// ---------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------

/// Verifies connection tokens against an [`AuthConfig`]. Cheap to share
/// (wrap in an `Arc`); verification takes `&self`.
pub struct Verifier {
    hmac: Option<DecodingKey>,
    rsa: Option<DecodingKey>,
    ec: Option<DecodingKey>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway_secs: u64,
    allow_anonymous: bool,
    require_exp: bool,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway_secs", &self.leeway_secs)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("require_exp", &self.require_exp)
            .finish()
    }
}

fn non_empty(field: &str, v: &Option<String>) -> Result<(), AuthError> {
    match v {
        Some(s) if s.trim().is_empty() => {
            Err(AuthError::Config(format!("{field} is set but empty")))
        }
        _ => Ok(()),
    }
}

impl Verifier {
    /// Builds a verifier, validating `config` (see [`AuthConfig::validate`]).
    pub fn new(config: &AuthConfig) -> Result<Verifier, AuthError> {
        if config.leeway > MAX_LEEWAY {
            return Err(AuthError::Config(format!(
                "leeway is {} s; at most {} s is allowed",
                config.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            )));
        }
        non_empty("audience", &config.audience)?;
        non_empty("issuer", &config.issuer)?;

        let hmac = match &config.hmac_secret {
            None => None,
            Some(secret) => {
                check_hmac_secret("hmac_secret", secret.as_bytes()).map_err(AuthError::Config)?;
                Some(DecodingKey::from_secret(secret.as_bytes()))
            }
        };
        let rsa = match &config.rsa_public_key_pem {
            None => None,
            Some(pem) => Some(DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| {
                AuthError::Config(format!(
                    "rsa_public_key_pem is not a valid RSA public key PEM ({e})"
                ))
            })?),
        };
        let ec = match &config.ec_public_key_pem {
            None => None,
            Some(pem) => Some(DecodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
                AuthError::Config(format!(
                    "ec_public_key_pem is not a valid EC public key PEM ({e})"
                ))
            })?),
        };
        if hmac.is_none() && rsa.is_none() && ec.is_none() && !config.allow_anonymous {
            return Err(AuthError::NoKey);
        }
        Ok(Verifier {
            hmac,
            rsa,
            ec,
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
            leeway_secs: config.leeway.as_secs(),
            allow_anonymous: config.allow_anonymous,
            require_exp: config.require_exp,
        })
    }

    /// The algorithms this verifier accepts (those whose key is configured),
    /// e.g. `["HS256", "ES256"]`.
    pub fn algorithms(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.hmac.is_some() {
            v.push("HS256");
        }
        if self.rsa.is_some() {
            v.push("RS256");
        }
        if self.ec.is_some() {
            v.push("ES256");
        }
        v
    }

    /// The configured leeway, in whole seconds.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway_secs)
    }

    /// Whether clients may connect without a token.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Authenticates a connection attempt: with a token, [`verify`](Self::verify)
    /// it; without one, anonymous [`Claims`] if allowed, else
    /// [`AuthError::MissingToken`]. An empty token counts as no token.
    pub fn authenticate(&self, token: Option<&str>, now: SystemTime) -> Result<Claims, AuthError> {
        match token {
            Some(t) if !t.is_empty() => self.verify(t, now),
            _ if self.allow_anonymous => Ok(Claims::anonymous()),
            _ => Err(AuthError::MissingToken),
        }
    }

    /// [`verify`](Self::verify) at the current system time.
    pub fn verify_now(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify(token, SystemTime::now())
    }

    /// Verifies `token` as seen at time `now` and returns its claims.
    ///
    /// Never panics, whatever the input. See the module docs for what is
    /// checked and in which order.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed("token too long"));
        }
        let alg = parse_header(token)?;
        let (algorithm, key) = match alg.as_str() {
            "HS256" => (Algorithm::HS256, self.hmac.as_ref()),
            "RS256" => (Algorithm::RS256, self.rsa.as_ref()),
            "ES256" => (Algorithm::ES256, self.ec.as_ref()),
            _ => (Algorithm::HS256, None),
        };
        let Some(key) = key else {
            if self.hmac.is_none() && self.rsa.is_none() && self.ec.is_none() {
                return Err(AuthError::NoKey);
            }
            return Err(AuthError::AlgorithmNotAllowed(
                alg.chars().take(32).collect(),
            ));
        };

        // jsonwebtoken checks the signature (for exactly this algorithm and
        // key family) and decodes the claims; every claim check is ours, done
        // against `now` below.
        let mut validation = Validation::new(algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(token, key, &validation)
            .map_err(map_jwt_error)?
            .claims;
        self.check_claims(&claims, now)?;
        Ok(claims)
    }

    fn check_claims(&self, c: &Claims, now: SystemTime) -> Result<(), AuthError> {
        if c.sub.is_empty() {
            return Err(AuthError::MissingSubject);
        }
        if let Some(want) = &self.issuer {
            if c.iss.as_deref() != Some(want.as_str()) {
                return Err(AuthError::BadIssuer);
            }
        }
        if let Some(want) = &self.audience {
            if !c.aud.iter().any(|a| a == want) {
                return Err(AuthError::BadAudience);
            }
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if let Some(nbf) = c.nbf {
            if now.saturating_add(self.leeway_secs) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }
        match c.exp {
            Some(exp) if now >= exp.saturating_add(self.leeway_secs) => Err(AuthError::Expired),
            None if self.require_exp => Err(AuthError::MissingExpiry),
            _ => Ok(()),
        }
    }
}

/// Splits off and decodes the JOSE header, returning its `alg`. Refuses
/// anything but three dot-separated segments and headers with `crit`.
fn parse_header(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: Option<serde_json::Value>,
        crit: Option<serde_json::Value>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated segments"));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| malformed("header is not base64url"))?;
    let raw: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| malformed("header is not a JSON object"))?;
    if raw.crit.is_some() {
        return Err(malformed("unsupported critical header (crit)"));
    }
    match raw.alg {
        Some(serde_json::Value::String(alg)) => Ok(alg),
        Some(_) => Err(malformed("header alg is not a string")),
        None => Err(malformed("header has no alg")),
    }
}

fn map_jwt_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => AuthError::BadSignature,
        // Only reachable if the key failed to parse lazily; treat the token as
        // not verifiable by this key.
        K::InvalidEcdsaKey | K::InvalidRsaKey(_) | K::InvalidKeyFormat => AuthError::BadSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => {
            AuthError::AlgorithmNotAllowed(String::new())
        }
        K::InvalidToken => malformed("not a JWT"),
        K::Base64(_) => malformed("segment is not base64url"),
        K::Json(_) => malformed("claims are not a JSON object of the expected types"),
        K::Utf8(_) => malformed("segment is not UTF-8"),
        _ => malformed("token rejected"),
    }
}

fn check_hmac_secret(field: &str, secret: &[u8]) -> Result<(), String> {
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(format!(
            "{field} is {} bytes; use at least {MIN_HMAC_SECRET_LEN} random bytes",
            secret.len()
        ));
    }
    if secret.trim_ascii_start().starts_with(b"-----BEGIN") {
        return Err(format!(
            "{field} looks like a PEM key; use rsa_public_key_pem / ec_public_key_pem for public keys"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Minting
// ---------------------------------------------------------------------------

/// Builds the claims of a token to mint (for `wshub token` and tests).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use wshub::hub::auth::{AuthConfig, ClaimsBuilder, Minter, Verifier};
///
/// let secret = "a-test-secret-of-at-least-32-bytes!!";
/// let minter = Minter::hs256(secret.as_bytes())?;
/// let b = ClaimsBuilder::new("user-42")
///     .ttl(Some(Duration::from_secs(600)))
///     .channel("news:*");
/// let token = minter.mint(&b, SystemTime::now())?;
///
/// let mut config = AuthConfig::default();
/// config.hmac_secret = Some(secret.into());
/// let claims = Verifier::new(&config)?.verify_now(&token)?;
/// assert_eq!(claims.sub, "user-42");
/// assert!(claims.can_subscribe("news:sport"));
/// # Ok::<(), wshub::hub::auth::AuthError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimsBuilder {
    sub: String,
    ttl: Option<Duration>,
    not_before: Option<Duration>,
    audience: Vec<String>,
    issuer: Option<String>,
    info: Option<serde_json::Value>,
    channels: Vec<String>,
    publish: Vec<String>,
    tags: std::collections::BTreeMap<String, String>,
}

impl ClaimsBuilder {
    /// Starts claims for user `sub`, valid for [`DEFAULT_TTL`] from minting.
    pub fn new(sub: impl Into<String>) -> Self {
        ClaimsBuilder {
            sub: sub.into(),
            ttl: Some(DEFAULT_TTL),
            not_before: None,
            audience: Vec::new(),
            issuer: None,
            info: None,
            channels: Vec::new(),
            publish: Vec::new(),
            tags: std::collections::BTreeMap::new(),
        }
    }

    /// Sets the lifetime: `exp = now + ttl`. `None` mints a token without
    /// `exp` (refused by verifiers with [`AuthConfig::require_exp`] on).
    pub fn ttl(mut self, ttl: impl Into<Option<Duration>>) -> Self {
        self.ttl = ttl.into();
        self
    }

    /// Sets `nbf = now + delay`.
    pub fn not_before(mut self, delay: Duration) -> Self {
        self.not_before = Some(delay);
        self
    }

    /// Adds an audience to `aud`.
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audience.push(aud.into());
        self
    }

    /// Sets `iss`.
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(iss.into());
        self
    }

    /// Sets the presence `info`.
    pub fn info(mut self, info: serde_json::Value) -> Self {
        self.info = Some(info);
        self
    }

    /// Grants subscribe permission for a channel or pattern.
    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channels.push(channel.into());
        self
    }

    /// Grants publish permission for a channel or pattern.
    pub fn publish(mut self, channel: impl Into<String>) -> Self {
        self.publish.push(channel.into());
        self
    }

    /// Sets a connection tag (publications can target tags with a filter).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.insert(key.into(), value.into());
        self
    }

    /// The claims as minted at `now` (`iat = now`, `exp`/`nbf` relative to it).
    pub fn build(&self, now: SystemTime) -> Claims {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Claims {
            sub: self.sub.clone(),
            exp: self.ttl.map(|t| now.saturating_add(t.as_secs())),
            nbf: self.not_before.map(|t| now.saturating_add(t.as_secs())),
            iat: Some(now),
            aud: self.audience.clone(),
            iss: self.issuer.clone(),
            info: self.info.clone(),
            channels: self.channels.clone(),
            publish: self.publish.clone(),
            tags: self.tags.clone(),
        }
    }
}

/// Signs connection tokens with one key: an HS256 secret, or an RS256 / ES256
/// private key in PEM.
pub struct Minter {
    key: EncodingKey,
    algorithm: Algorithm,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// HS256 with a shared secret (same rules as [`AuthConfig::hmac_secret`]).
    pub fn hs256(secret: &[u8]) -> Result<Minter, AuthError> {
        check_hmac_secret("HMAC secret", secret).map_err(AuthError::Key)?;
        Minter::probe(EncodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 with an RSA private key PEM (PKCS#1 `RSA PRIVATE KEY` or PKCS#8
    /// `PRIVATE KEY`).
    pub fn rs256_pem(private_key_pem: &[u8]) -> Result<Minter, AuthError> {
        let key = EncodingKey::from_rsa_pem(private_key_pem)
            .map_err(|e| AuthError::Key(format!("not a valid RSA private key PEM ({e})")))?;
        Minter::probe(key, Algorithm::RS256)
    }

    /// ES256 with a P-256 private key PEM in PKCS#8 (`PRIVATE KEY`; convert
    /// an `EC PRIVATE KEY` with `openssl pkcs8 -topk8 -nocrypt`).
    pub fn es256_pem(private_key_pem: &[u8]) -> Result<Minter, AuthError> {
        let key = EncodingKey::from_ec_pem(private_key_pem).map_err(|e| {
            AuthError::Key(format!(
                "not a valid EC private key PEM ({e}); ES256 keys must be P-256 in PKCS#8 PEM"
            ))
        })?;
        Minter::probe(key, Algorithm::ES256)
    }

    /// Some key problems only show when signing: sign once now so that a bad
    /// key fails at construction, not at the first mint.
    fn probe(key: EncodingKey, algorithm: Algorithm) -> Result<Minter, AuthError> {
        let minter = Minter { key, algorithm };
        minter.sign(&Claims {
            sub: "probe".into(),
            ..Claims::anonymous()
        })?;
        Ok(minter)
    }

    /// The algorithm this minter signs with: `"HS256"`, `"RS256"` or `"ES256"`.
    pub fn algorithm(&self) -> &'static str {
        match self.algorithm {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "HS256",
        }
    }

    /// Builds the claims at `now` and signs them.
    pub fn mint(&self, claims: &ClaimsBuilder, now: SystemTime) -> Result<String, AuthError> {
        self.sign(&claims.build(now))
    }

    /// Signs `claims` as they are. Refuses an empty `sub`
    /// ([`AuthError::MissingSubject`]), which no verifier would accept.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        if claims.sub.is_empty() {
            return Err(AuthError::MissingSubject);
        }
        jsonwebtoken::encode(&Header::new(self.algorithm), claims, &self.key)
            .map_err(|e| AuthError::Key(format!("signing failed ({e})")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // Test-only keys generated with `openssl genpkey` (RSA 2048, EC P-256).
    const RSA_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCTi4DmwmKSIlm+\n\
OSZOgqFvG040lsWqMEVSqFi/8m+/IdbnG9FPQcTUxik35wEjCPDi+1IRTjbzzo38\n\
MWjMhqCpg9DLLhyfSohdT5l5qSlvUOpCfi5NzMi3fzeGkBoSoONt/5weEy0KAWCu\n\
RG4FrQUanEg4rOmVluQEpzzVdMzu6axnWHqBJmg3r80fwyGgGuoE+wsrZH3xN4Np\n\
hN58NZnknWprsKXa3Cdt0rTz0HNSzWTg7xQuJFnWjlbGFSl0tneYEeXXCcIQN9Uq\n\
2WIp4E+hmMUksq+wy/GSvhQ5nDda8Zh1/2PBbyvRK/dwTQoTGGUB5fId+QNRuEPD\n\
yGuk+cMRAgMBAAECgf9boNPoFJQrEyGO627rfZJ28ejW6pgjnUWSC1gjddaSJMtd\n\
9sq04QVopqellCngk9NJZ0phKBxWRFskpXmNrMmZ0cbuRTB4vCpRYippko8CfQ66\n\
Ed5R0HDFHckMzHmGy0ot+PHdRBPr2jv47I7NiKF8aWcsU8938FsImdNlNA7MpL4C\n\
lhsUfgmW6lBonMhOOy1YCyHLpr5BlLwAiv/OpWHPQ5/k9Lez72kLy6OB+AEaJVRo\n\
OiJOWtg2sCObeRCCVNIZQyuZnj0EfPqUZvBfkLwU9tjKnz7Vdx4ctgLrKqgjdpNo\n\
+Tv4Sio/t3NLyyjht/fB7H3zn5Da80KE3AAu+E0CgYEAw5V6LO0SvSCsPhFVMFvt\n\
nJQihCTBChPqRaMtnWwzemBnlZMVWO5eujr3xDYUaXIPVdxtfE+4G/kwJtVrHLGs\n\
AmFBqtNwwyyARy9NDnICOlQSH/rDedLkMWeFxh5rDINa4JHdGnE9iR3LevFY69vs\n\
sC0YnqAVglRC01UH86KDzfUCgYEAwR8qylFxb6XdJiNYuoQpaX+77lAsIDNpAZRM\n\
khxOrhfmxIPwmMBkVt+Yz6wyo8FsV4AG4YmHIafozAhed9FMUnA+0qam+DrsBvZz\n\
9KWVnCMm2ALUO7Uz6YjPELxN5VozNbF+PWGZd1LEBtI9Npi7ZLvbY72u0jUDP9pr\n\
JgGz8y0CgYEAqW0ffTORfAyFqO7S4SWBXJZmoBpGrzg5RUHqDejhXy2MDeJwJ622\n\
mZTjdTFz1TRdXH+qyHk2f+UJdVqDg0PWQemGPTkVAb3XEdND6TOSAn05hkJwe2PZ\n\
EYMgO1O2YAyZ+NfitTlLmTAaSNIxuX+2NZebMC5084WSrgeG7+LkUtECgYEAhYqN\n\
xlVHAZNKN0Md6evVzxP62jIqMSIbrHHl+OsGJTB17NHnn1j6iXAYdRJ3+fCYgHER\n\
UQgOn2FCg0QOPwBFrIPdjUCcGO51o+LsD/IoYE2WYKykIZ2NhiGKPeJYYw5adviD\n\
eOJygqaC0syyc3xtqJyWeoQBzW3HD3JzwVZQHwkCgYBt/aL2tNlIXptX2lwXe5rP\n\
tsqLMLdJXL5RUBiK8/OnR8SnJJlnbg40GMCHPYaSphuXBaeCSNLZTXEbyTYG+nii\n\
MG4ns+GbYloF97IF2dFsp484ieyoPr7rqGbmQ7swm9czPPF0vZv9mr3csAiBMw9e\n\
38zbJbCHmi5xnkrCS26Wpw==\n\
-----END PRIVATE KEY-----\n\
";
    const RSA_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAk4uA5sJikiJZvjkmToKh\n\
bxtONJbFqjBFUqhYv/JvvyHW5xvRT0HE1MYpN+cBIwjw4vtSEU42886N/DFozIag\n\
qYPQyy4cn0qIXU+Zeakpb1DqQn4uTczIt383hpAaEqDjbf+cHhMtCgFgrkRuBa0F\n\
GpxIOKzplZbkBKc81XTM7umsZ1h6gSZoN6/NH8MhoBrqBPsLK2R98TeDaYTefDWZ\n\
5J1qa7Cl2twnbdK089BzUs1k4O8ULiRZ1o5WxhUpdLZ3mBHl1wnCEDfVKtliKeBP\n\
oZjFJLKvsMvxkr4UOZw3WvGYdf9jwW8r0Sv3cE0KExhlAeXyHfkDUbhDw8hrpPnD\n\
EQIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
    const EC_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgFoUIjSqYT1ENCaON\n\
fyba6Dxt0RGHR+qCwsqKSSxgRKKhRANCAAS+MZBvTILukwKLSyhMukC9n/BNZmaF\n\
RwXwvLPMsQ267q3n+TOGA2zFRYWFS5157nq7aJFPP3Ip/Kzg9PxS58zE\n\
-----END PRIVATE KEY-----\n\
";
    const EC_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEvjGQb0yC7pMCi0soTLpAvZ/wTWZm\n\
hUcF8LyzzLENuu6t5/kzhgNsxUWFhUudee56u2iRTz9yKfys4PT8UufMxA==\n\
-----END PUBLIC KEY-----\n\
";
    const EC2_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg38HudBtnQeLAPYVC\n\
3NDswfvbCu1SM5WfyNCb+9meIAqhRANCAASbPjmD5t0k+hV1G8XiDWvCL9xy8Zm3\n\
yPfmE9Lr11DBrPM0F+boa1Yx+1LOMI/wveESYFonpsM4GVXV5ZP40Wsv\n\
-----END PRIVATE KEY-----\n\
";
    const EC2_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEmz45g+bdJPoVdRvF4g1rwi/ccvGZ\n\
t8j35hPS69dQwazzNBfm6GtWMftSzjCP8L3hEmBaJ6bDOBlV1eWT+NFrLw==\n\
-----END PUBLIC KEY-----\n\
";
    const EC_SEC1_PRIV: &str = "\
-----BEGIN EC PRIVATE KEY-----\n\
MHcCAQEEIKihwAxf62n26EAu8DZJHgsh0oUgjFQCuwpliaLvH+qjoAoGCCqGSM49\n\
AwEHoUQDQgAE+uABNyCPpyEmMC7zOP6RI9F2BJ7PUM+iui47jClBMpTQHKNEKQAq\n\
UhHNRvx+7m0jEmaX0TDf9bJe16v6lSReug==\n\
-----END EC PRIVATE KEY-----\n\
";

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test-secret";
    /// 2023-11-14T22:13:20Z, an arbitrary fixed "now".
    const T0: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    fn cfg() -> AuthConfig {
        AuthConfig {
            hmac_secret: Some(SECRET.into()),
            rsa_public_key_pem: Some(RSA_PUB.into()),
            ec_public_key_pem: Some(EC_PUB.into()),
            ..AuthConfig::default()
        }
    }

    fn only(field: &str, pem_or_secret: &str) -> AuthConfig {
        let mut c = AuthConfig::default();
        match field {
            "hmac" => c.hmac_secret = Some(pem_or_secret.into()),
            "rsa" => c.rsa_public_key_pem = Some(pem_or_secret.into()),
            _ => c.ec_public_key_pem = Some(pem_or_secret.into()),
        }
        c
    }

    fn hs() -> Minter {
        Minter::hs256(SECRET.as_bytes()).unwrap()
    }

    /// Signs arbitrary JSON claims with arbitrary alg/key via jsonwebtoken.
    fn sign_raw(alg: Algorithm, key: &EncodingKey, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn hs_raw(claims: serde_json::Value) -> String {
        sign_raw(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            &claims,
        )
    }

    fn full_builder() -> ClaimsBuilder {
        ClaimsBuilder::new("user-42")
            .ttl(Duration::from_secs(600))
            .info(json!({"name": "Ada", "roles": ["admin"]}))
            .channel("news:*")
            .channel("chat:lobby")
            .publish("chat:lobby")
    }

    // ---- valid tokens -----------------------------------------------------

    #[test]
    fn hs256_round_trip_keeps_all_claims() {
        let v = Verifier::new(&cfg()).unwrap();
        let token = hs()
            .mint(&full_builder().audience("hub").issuer("app"), at(T0))
            .unwrap();
        let c = v.verify(&token, at(T0 + 1)).unwrap();
        assert_eq!(c.sub, "user-42");
        assert_eq!(c.exp, Some(T0 + 600));
        assert_eq!(c.iat, Some(T0));
        assert_eq!(c.nbf, None);
        assert_eq!(c.aud, vec!["hub".to_string()]);
        assert_eq!(c.iss.as_deref(), Some("app"));
        assert_eq!(c.info, Some(json!({"name": "Ada", "roles": ["admin"]})));
        assert_eq!(c.channels, vec!["news:*", "chat:lobby"]);
        assert_eq!(c.publish, vec!["chat:lobby"]);
        assert!(c.can_subscribe("news:sport") && c.can_subscribe("chat:lobby"));
        assert!(!c.can_subscribe("chat:other") && !c.can_publish("news:sport"));
        assert!(c.can_publish("chat:lobby"));
        assert!(!c.is_anonymous());
        assert_eq!(
            c,
            full_builder().audience("hub").issuer("app").build(at(T0))
        );
    }

    #[test]
    fn rs256_valid() {
        let m = Minter::rs256_pem(RSA_PRIV.as_bytes()).unwrap();
        assert_eq!(m.algorithm(), "RS256");
        let token = m.mint(&full_builder(), at(T0)).unwrap();
        for c in [cfg(), only("rsa", RSA_PUB)] {
            let claims = Verifier::new(&c).unwrap().verify(&token, at(T0)).unwrap();
            assert_eq!(claims.sub, "user-42");
        }
    }

    #[test]
    fn es256_valid() {
        let m = Minter::es256_pem(EC_PRIV.as_bytes()).unwrap();
        assert_eq!(m.algorithm(), "ES256");
        let token = m.mint(&full_builder(), at(T0)).unwrap();
        for c in [cfg(), only("ec", EC_PUB)] {
            let claims = Verifier::new(&c).unwrap().verify(&token, at(T0)).unwrap();
            assert_eq!(claims.channels.len(), 2);
        }
    }

    #[test]
    fn verifier_lists_algorithms_of_configured_keys() {
        assert_eq!(
            Verifier::new(&cfg()).unwrap().algorithms(),
            ["HS256", "RS256", "ES256"]
        );
        assert_eq!(
            Verifier::new(&only("ec", EC_PUB)).unwrap().algorithms(),
            ["ES256"]
        );
    }

    #[test]
    fn verify_now_uses_the_clock() {
        let v = Verifier::new(&cfg()).unwrap();
        let token = hs()
            .mint(&ClaimsBuilder::new("u"), SystemTime::now())
            .unwrap();
        assert!(v.verify_now(&token).is_ok());
        let old = hs()
            .mint(&ClaimsBuilder::new("u").ttl(Duration::from_secs(1)), at(T0))
            .unwrap();
        assert_eq!(v.verify_now(&old), Err(AuthError::Expired));
    }

    // ---- time ---------------------------------------------------------------

    #[test]
    fn exp_with_default_leeway() {
        let v = Verifier::new(&cfg()).unwrap();
        assert_eq!(v.leeway(), Duration::from_secs(30));
        let token = hs()
            .mint(
                &ClaimsBuilder::new("u").ttl(Duration::from_secs(60)),
                at(T0),
            )
            .unwrap();
        assert!(v.verify(&token, at(T0 + 60)).is_ok(), "within leeway");
        assert!(
            v.verify(&token, at(T0 + 89)).is_ok(),
            "last second of leeway"
        );
        assert_eq!(v.verify(&token, at(T0 + 90)), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, at(T0 + 10_000)), Err(AuthError::Expired));
    }

    #[test]
    fn exp_without_leeway_is_exclusive() {
        let v = Verifier::new(&AuthConfig {
            leeway: Duration::ZERO,
            ..cfg()
        })
        .unwrap();
        let token = hs()
            .mint(
                &ClaimsBuilder::new("u").ttl(Duration::from_secs(60)),
                at(T0),
            )
            .unwrap();
        assert!(v.verify(&token, at(T0 + 59)).is_ok());
        assert_eq!(v.verify(&token, at(T0 + 60)), Err(AuthError::Expired));
    }

    #[test]
    fn nbf_with_leeway() {
        let v = Verifier::new(&cfg()).unwrap();
        let token = hs()
            .mint(
                &ClaimsBuilder::new("u").not_before(Duration::from_secs(100)),
                at(T0),
            )
            .unwrap();
        assert_eq!(v.verify(&token, at(T0)), Err(AuthError::NotYetValid));
        assert_eq!(v.verify(&token, at(T0 + 69)), Err(AuthError::NotYetValid));
        assert!(v.verify(&token, at(T0 + 70)).is_ok());
        assert!(v.verify(&token, at(T0 + 100)).is_ok());
    }

    #[test]
    fn missing_exp_refused_unless_configured() {
        let token = hs()
            .mint(&ClaimsBuilder::new("u").ttl(None), at(T0))
            .unwrap();
        let strict = Verifier::new(&cfg()).unwrap();
        assert_eq!(strict.verify(&token, at(T0)), Err(AuthError::MissingExpiry));
        let lax = Verifier::new(&AuthConfig {
            require_exp: false,
            ..cfg()
        })
        .unwrap();
        let c = lax.verify(&token, at(u64::MAX / 2)).unwrap();
        assert_eq!(c.time_to_expiry(at(T0)), None);
    }

    #[test]
    fn time_to_expiry() {
        let c = ClaimsBuilder::new("u")
            .ttl(Duration::from_secs(600))
            .build(at(T0));
        assert_eq!(c.time_to_expiry(at(T0)), Some(Duration::from_secs(600)));
        let half = UNIX_EPOCH + Duration::from_millis(T0 * 1000 + 599_500);
        assert_eq!(c.time_to_expiry(half), Some(Duration::from_millis(500)));
        assert_eq!(c.time_to_expiry(at(T0 + 601)), Some(Duration::ZERO));
        assert_eq!(
            c.time_to_expiry(UNIX_EPOCH - Duration::from_secs(5)),
            Some(Duration::from_secs(T0 + 600))
        );
    }

    #[test]
    fn fractional_and_huge_numeric_dates() {
        let v = Verifier::new(&cfg()).unwrap();
        let c = v
            .verify(
                &hs_raw(json!({"sub": "u", "exp": (T0 + 10) as f64 + 0.9, "iat": T0 as f64 + 0.5})),
                at(T0),
            )
            .unwrap();
        assert_eq!((c.exp, c.iat), (Some(T0 + 10), Some(T0)));
        // exp at the top of the range must not overflow with leeway added.
        let c = v
            .verify(&hs_raw(json!({"sub": "u", "exp": u64::MAX})), at(T0))
            .unwrap();
        assert!(c.time_to_expiry(at(T0)).is_some());
        // A float beyond u64 saturates (never expires before the heat death).
        let c = v
            .verify(&hs_raw(json!({"sub": "u", "exp": 1e300})), at(T0))
            .unwrap();
        assert_eq!(c.exp, Some(u64::MAX));
        for bad in [
            json!(-1),
            json!(-0.5),
            json!("1700000000"),
            json!(true),
            json!([1]),
            json!({}),
        ] {
            let t = hs_raw(json!({"sub": "u", "exp": bad}));
            assert!(
                matches!(v.verify(&t, at(T0)), Err(AuthError::Malformed(_))),
                "{bad}"
            );
        }
    }

    // ---- aud / iss / sub ----------------------------------------------------

    #[test]
    fn audience_checked_only_when_configured() {
        let v = Verifier::new(&AuthConfig {
            audience: Some("hub".into()),
            ..cfg()
        })
        .unwrap();
        let mint = |b: ClaimsBuilder| hs().mint(&b, at(T0)).unwrap();
        assert!(v
            .verify(&mint(ClaimsBuilder::new("u").audience("hub")), at(T0))
            .is_ok());
        assert!(v
            .verify(
                &mint(ClaimsBuilder::new("u").audience("other").audience("hub")),
                at(T0)
            )
            .is_ok());
        assert_eq!(
            v.verify(&mint(ClaimsBuilder::new("u").audience("other")), at(T0)),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            v.verify(&mint(ClaimsBuilder::new("u")), at(T0)),
            Err(AuthError::BadAudience)
        );
        assert_eq!(
            v.verify(
                &hs_raw(json!({"sub": "u", "exp": T0 + 9, "aud": "hubx"})),
                at(T0)
            ),
            Err(AuthError::BadAudience)
        );
        let any = Verifier::new(&cfg()).unwrap();
        assert!(any
            .verify(&mint(ClaimsBuilder::new("u").audience("whatever")), at(T0))
            .is_ok());
        let bad_type = hs_raw(json!({"sub": "u", "exp": T0 + 9, "aud": 5}));
        assert!(matches!(
            v.verify(&bad_type, at(T0)),
            Err(AuthError::Malformed(_))
        ));
    }

    #[test]
    fn issuer_checked_only_when_configured() {
        let v = Verifier::new(&AuthConfig {
            issuer: Some("app".into()),
            ..cfg()
        })
        .unwrap();
        let mint = |b: ClaimsBuilder| hs().mint(&b, at(T0)).unwrap();
        assert!(v
            .verify(&mint(ClaimsBuilder::new("u").issuer("app")), at(T0))
            .is_ok());
        assert_eq!(
            v.verify(&mint(ClaimsBuilder::new("u").issuer("App")), at(T0)),
            Err(AuthError::BadIssuer)
        );
        assert_eq!(
            v.verify(&mint(ClaimsBuilder::new("u")), at(T0)),
            Err(AuthError::BadIssuer)
        );
        let any = Verifier::new(&cfg()).unwrap();
        assert!(any
            .verify(&mint(ClaimsBuilder::new("u").issuer("x")), at(T0))
            .is_ok());
    }

    #[test]
    fn subject_required_and_non_empty() {
        let v = Verifier::new(&cfg()).unwrap();
        for claims in [
            json!({"exp": T0 + 9}),
            json!({"sub": "", "exp": T0 + 9}),
            json!({"sub": null, "exp": T0 + 9}),
        ] {
            let r = v.verify(&hs_raw(claims.clone()), at(T0));
            assert!(
                matches!(
                    r,
                    Err(AuthError::MissingSubject) | Err(AuthError::Malformed(_))
                ),
                "{claims}: {r:?}"
            );
        }
        assert_eq!(
            v.verify(&hs_raw(json!({"exp": T0 + 9})), at(T0)),
            Err(AuthError::MissingSubject)
        );
        assert_eq!(
            v.verify(hs_raw(json!({"sub": 42, "exp": T0 + 9})).as_str(), at(T0))
                .map(|_| ()),
            Err(malformed(
                "claims are not a JSON object of the expected types"
            ))
        );
        assert_eq!(
            hs().sign(&Claims::anonymous()),
            Err(AuthError::MissingSubject)
        );
    }

    #[test]
    fn expired_reported_only_for_otherwise_valid_tokens() {
        let v = Verifier::new(&AuthConfig {
            issuer: Some("app".into()),
            ..cfg()
        })
        .unwrap();
        let t = hs()
            .mint(
                &ClaimsBuilder::new("u")
                    .issuer("evil")
                    .ttl(Duration::from_secs(1)),
                at(T0),
            )
            .unwrap();
        assert_eq!(v.verify(&t, at(T0 + 1000)), Err(AuthError::BadIssuer));
        let forged = {
            let other = Minter::hs256(b"another-secret-another-secret-!!").unwrap();
            other
                .mint(&ClaimsBuilder::new("u").ttl(Duration::from_secs(1)), at(T0))
                .unwrap()
        };
        assert_eq!(
            v.verify(&forged, at(T0 + 1000)),
            Err(AuthError::BadSignature)
        );
    }

    // ---- alg: none and algorithm confusion --------------------------------

    #[test]
    fn alg_none_rejected() {
        let v = Verifier::new(&cfg()).unwrap();
        let payload = b64(json!({"sub": "admin", "exp": T0 + 600})
            .to_string()
            .as_bytes());
        for alg in ["none", "None", "NONE", "nOnE", ""] {
            let header = b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes());
            for sig in ["", "AAAA"] {
                let token = format!("{header}.{payload}.{sig}");
                assert_eq!(
                    v.verify(&token, at(T0)),
                    Err(AuthError::AlgorithmNotAllowed(alg.into())),
                    "{token}"
                );
            }
            // Without the trailing dot it is not even a JWS.
            let token = format!("{header}.{payload}");
            assert!(matches!(
                v.verify(&token, at(T0)),
                Err(AuthError::Malformed(_))
            ));
        }
    }

    #[test]
    fn hs256_signed_with_rsa_public_key_is_rejected() {
        // The classic confusion attack: HMAC keyed with the (public) PEM text.
        let claims = json!({"sub": "admin", "exp": T0 + 600});
        let forged = sign_raw(
            Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUB.as_bytes()),
            &claims,
        );
        let v = Verifier::new(&only("rsa", RSA_PUB)).unwrap();
        assert_eq!(
            v.verify(&forged, at(T0)),
            Err(AuthError::AlgorithmNotAllowed("HS256".into()))
        );
        // With an HMAC secret configured too, HS256 uses that secret only.
        let v = Verifier::new(&cfg()).unwrap();
        assert_eq!(v.verify(&forged, at(T0)), Err(AuthError::BadSignature));
        // Same with the EC key.
        let forged = sign_raw(
            Algorithm::HS256,
            &EncodingKey::from_secret(EC_PUB.as_bytes()),
            &claims,
        );
        let v = Verifier::new(&only("ec", EC_PUB)).unwrap();
        assert_eq!(
            v.verify(&forged, at(T0)),
            Err(AuthError::AlgorithmNotAllowed("HS256".into()))
        );
        assert_eq!(
            Verifier::new(&cfg()).unwrap().verify(&forged, at(T0)),
            Err(AuthError::BadSignature)
        );
    }

    #[test]
    fn header_alg_must_match_key_and_signature() {
        let rs = Minter::rs256_pem(RSA_PRIV.as_bytes())
            .unwrap()
            .mint(&full_builder(), at(T0))
            .unwrap();
        let es = Minter::es256_pem(EC_PRIV.as_bytes())
            .unwrap()
            .mint(&full_builder(), at(T0))
            .unwrap();
        // Key type not configured.
        assert_eq!(
            Verifier::new(&only("ec", EC_PUB))
                .unwrap()
                .verify(&rs, at(T0)),
            Err(AuthError::AlgorithmNotAllowed("RS256".into()))
        );
        assert_eq!(
            Verifier::new(&only("rsa", RSA_PUB))
                .unwrap()
                .verify(&es, at(T0)),
            Err(AuthError::AlgorithmNotAllowed("ES256".into()))
        );
        // Header rewritten to another configured algorithm: signature fails.
        let v = Verifier::new(&cfg()).unwrap();
        for (token, new_alg) in [
            (&rs, "ES256"),
            (&rs, "HS256"),
            (&es, "RS256"),
            (&es, "HS256"),
        ] {
            let rest = token.split_once('.').unwrap().1;
            let header = b64(format!(r#"{{"alg":"{new_alg}","typ":"JWT"}}"#).as_bytes());
            let swapped = format!("{header}.{rest}");
            assert!(
                matches!(
                    v.verify(&swapped, at(T0)),
                    Err(AuthError::BadSignature) | Err(AuthError::Malformed(_))
                ),
                "{new_alg}"
            );
        }
        // Algorithms outside the three are never accepted, even for a right key family.
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = sign_raw(
                alg,
                &EncodingKey::from_secret(SECRET.as_bytes()),
                &json!({"sub": "u", "exp": T0 + 9}),
            );
            assert!(matches!(
                v.verify(&t, at(T0)),
                Err(AuthError::AlgorithmNotAllowed(_))
            ));
        }
        let ps = sign_raw(
            Algorithm::PS256,
            &EncodingKey::from_rsa_pem(RSA_PRIV.as_bytes()).unwrap(),
            &json!({"sub": "u", "exp": T0 + 9}),
        );
        assert_eq!(
            v.verify(&ps, at(T0)),
            Err(AuthError::AlgorithmNotAllowed("PS256".into()))
        );
    }

    #[test]
    fn wrong_key_and_tampering_rejected() {
        let v = Verifier::new(&cfg()).unwrap();
        let other_ec = Minter::es256_pem(EC2_PRIV.as_bytes())
            .unwrap()
            .mint(&full_builder(), at(T0))
            .unwrap();
        assert_eq!(v.verify(&other_ec, at(T0)), Err(AuthError::BadSignature));
        let v2 = Verifier::new(&only("ec", EC2_PUB)).unwrap();
        assert!(v2.verify(&other_ec, at(T0)).is_ok());

        let tokens = [
            hs().mint(&full_builder(), at(T0)).unwrap(),
            Minter::rs256_pem(RSA_PRIV.as_bytes())
                .unwrap()
                .mint(&full_builder(), at(T0))
                .unwrap(),
            Minter::es256_pem(EC_PRIV.as_bytes())
                .unwrap()
                .mint(&full_builder(), at(T0))
                .unwrap(),
        ];
        for token in &tokens {
            assert!(v.verify(token, at(T0)).is_ok());
            let parts: Vec<&str> = token.split('.').collect();
            // Payload replaced: sub escalated, channels widened.
            let evil = b64(json!({"sub": "admin", "exp": T0 + 600, "channels": ["*"]})
                .to_string()
                .as_bytes());
            let t = format!("{}.{}.{}", parts[0], evil, parts[2]);
            assert_eq!(v.verify(&t, at(T0)), Err(AuthError::BadSignature));
            // Signature from a different token, or stripped.
            let other = hs().mint(&ClaimsBuilder::new("x"), at(T0)).unwrap();
            let t = format!(
                "{}.{}.{}",
                parts[0],
                parts[1],
                other.rsplit('.').next().unwrap()
            );
            assert!(matches!(
                v.verify(&t, at(T0)),
                Err(AuthError::BadSignature) | Err(AuthError::Malformed(_))
            ));
            let t = format!("{}.{}.", parts[0], parts[1]);
            assert!(matches!(
                v.verify(&t, at(T0)),
                Err(AuthError::BadSignature) | Err(AuthError::Malformed(_))
            ));
            // Every single-character change anywhere is rejected.
            for i in 0..token.len() {
                let mut bytes = token.clone().into_bytes();
                bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
                let t = String::from_utf8(bytes).unwrap();
                if t != *token {
                    assert!(v.verify(&t, at(T0)).is_err(), "flip at {i} accepted");
                }
            }
        }
    }

    #[test]
    fn crit_header_and_segment_count() {
        let v = Verifier::new(&cfg()).unwrap();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("k1".into());
        let ok = jsonwebtoken::encode(
            &h,
            &json!({"sub": "u", "exp": T0 + 9}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();
        assert!(v.verify(&ok, at(T0)).is_ok(), "kid is ignored");
        let header = b64(br#"{"alg":"HS256","crit":["exp"],"exp":1}"#);
        let t = format!("{header}.{}", ok.split_once('.').unwrap().1);
        assert_eq!(
            v.verify(&t, at(T0)),
            Err(malformed("unsupported critical header (crit)"))
        );
        assert!(matches!(
            v.verify(&format!("{ok}.x"), at(T0)),
            Err(AuthError::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&format!("x.{ok}"), at(T0)),
            Err(AuthError::Malformed(_))
        ));
    }

    // ---- garbage --------------------------------------------------------------

    #[test]
    fn garbage_never_panics() {
        let v = Verifier::new(&cfg()).unwrap();
        let valid = hs().mint(&full_builder(), at(T0)).unwrap();
        let mut inputs: Vec<String> = [
            "",
            ".",
            "..",
            "...",
            "a.b.c",
            "a.b",
            "....",
            "===.===.===",
            "\0",
            "é.é.é",
            "eyJ.eyJ.eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9..",
            "eyJhbGciOiJIUzI1NiJ9.e30.",
            "bnVsbA.bnVsbA.bnVsbA", // "null" everywhere
            "W10.W10.W10",          // "[]"
            "eyJhbGciOjF9.e30.",    // {"alg":1}
            "e30.e30.e30",          // {} (no alg)
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        inputs.push("a".repeat(MAX_TOKEN_LEN + 1));
        inputs.push(format!(
            "{}.{}.{}",
            "A".repeat(5000),
            "B".repeat(5000),
            "C".repeat(5000)
        ));
        for i in 0..valid.len() {
            inputs.push(valid[..i].to_string());
        }
        // Deterministic pseudo-random junk from a JWT-ish alphabet.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ {}\"";
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for n in 0..2000 {
            let mut s = String::new();
            for _ in 0..(n % 120) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            inputs.push(s);
        }
        // Valid header and signature with junk payloads.
        let header = valid.split('.').next().unwrap();
        for junk in [
            "",
            "e30",
            "W10",
            "bnVsbA",
            "eyJzdWIiOg",
            "////",
            "e30=",
            "AAAAAAAA",
        ] {
            inputs.push(format!(
                "{header}.{junk}.{}",
                valid.rsplit('.').next().unwrap()
            ));
        }
        for s in &inputs {
            let r = v.verify(s, at(T0));
            assert!(r.is_err(), "{s:?} accepted");
            let e = r.unwrap_err();
            assert_eq!(e.client_message(), "unauthorized", "{s:?}: {e}");
        }
    }

    // ---- anonymous, config --------------------------------------------------

    #[test]
    fn anonymous_mode() {
        let v = Verifier::new(&cfg()).unwrap();
        assert!(!v.allows_anonymous());
        assert_eq!(v.authenticate(None, at(T0)), Err(AuthError::MissingToken));
        assert_eq!(
            v.authenticate(Some(""), at(T0)),
            Err(AuthError::MissingToken)
        );
        let t = hs().mint(&ClaimsBuilder::new("u"), at(T0)).unwrap();
        assert_eq!(v.authenticate(Some(&t), at(T0)).unwrap().sub, "u");

        let anon_only = Verifier::new(&AuthConfig {
            allow_anonymous: true,
            ..AuthConfig::default()
        })
        .unwrap();
        let c = anon_only.authenticate(None, at(T0)).unwrap();
        assert!(c.is_anonymous() && !c.can_subscribe("news") && c.time_to_expiry(at(T0)).is_none());
        assert_eq!(
            anon_only.authenticate(Some(&t), at(T0)),
            Err(AuthError::NoKey)
        );
        // A bad token is not silently downgraded to anonymous.
        let both = Verifier::new(&AuthConfig {
            allow_anonymous: true,
            ..cfg()
        })
        .unwrap();
        assert_eq!(
            both.authenticate(Some("junk"), at(T0)).map(|_| ()),
            Err(malformed("expected three dot-separated segments"))
        );
    }

    #[test]
    fn config_validation() {
        assert_eq!(AuthConfig::default().validate(), Err(AuthError::NoKey));
        assert!(AuthConfig {
            allow_anonymous: true,
            ..AuthConfig::default()
        }
        .validate()
        .is_ok());
        assert!(cfg().validate().is_ok());

        let err = |c: AuthConfig| match c.validate() {
            Err(AuthError::Config(m)) => m,
            other => panic!("expected Config error, got {other:?}"),
        };
        assert!(err(only("hmac", "short")).contains("hmac_secret is 5 bytes"));
        assert!(err(only("hmac", "")).contains("hmac_secret"));
        assert!(err(only("hmac", RSA_PUB)).contains("looks like a PEM"));
        assert!(err(only("rsa", "not a pem")).starts_with("rsa_public_key_pem"));
        assert!(err(only("rsa", EC_PUB)).starts_with("rsa_public_key_pem"));
        assert!(err(only(
            "ec",
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        ))
        .starts_with("ec_public_key_pem"));
        assert!(err(only("ec", RSA_PUB)).starts_with("ec_public_key_pem"));
        // The message names the failing key even when others are fine.
        assert!(err(AuthConfig {
            ec_public_key_pem: Some("junk".into()),
            ..cfg()
        })
        .starts_with("ec_public_key_pem"));
        assert!(err(AuthConfig {
            leeway: Duration::from_secs(301),
            ..cfg()
        })
        .contains("leeway"));
        assert!(AuthConfig {
            leeway: MAX_LEEWAY,
            ..cfg()
        }
        .validate()
        .is_ok());
        assert!(err(AuthConfig {
            audience: Some(" ".into()),
            ..cfg()
        })
        .contains("audience"));
        assert!(err(AuthConfig {
            issuer: Some(String::new()),
            ..cfg()
        })
        .contains("issuer"));
        assert!(matches!(
            Verifier::new(&only("rsa", "x")),
            Err(AuthError::Config(_))
        ));
    }

    #[test]
    fn secrets_stay_out_of_debug() {
        let c = cfg();
        let s = format!("{c:?} {:?} {:?}", Verifier::new(&c).unwrap(), hs());
        assert!(!s.contains(SECRET) && !s.contains("BEGIN"), "{s}");
        assert!(s.contains("<redacted>") && s.contains("HS256"));
    }

    #[test]
    fn minter_key_errors() {
        assert!(matches!(Minter::hs256(b"short"), Err(AuthError::Key(_))));
        assert!(matches!(
            Minter::rs256_pem(RSA_PUB.as_bytes()),
            Err(AuthError::Key(_))
        ));
        assert!(matches!(
            Minter::rs256_pem(EC_PRIV.as_bytes()),
            Err(AuthError::Key(_))
        ));
        assert!(matches!(
            Minter::es256_pem(RSA_PRIV.as_bytes()),
            Err(AuthError::Key(_))
        ));
        assert!(matches!(
            Minter::es256_pem(b"garbage"),
            Err(AuthError::Key(_))
        ));
        match Minter::es256_pem(EC_SEC1_PRIV.as_bytes()) {
            Err(AuthError::Key(m)) => assert!(m.contains("PKCS#8"), "{m}"),
            Ok(m) => {
                // If the library learns SEC1, the key must still work.
                let t = m.mint(&ClaimsBuilder::new("u"), at(T0)).unwrap();
                assert!(Verifier::new(&only("ec", EC_PUB))
                    .unwrap()
                    .verify(&t, at(T0))
                    .is_err());
            }
            Err(e) => panic!("{e:?}"),
        }
    }

    // ---- errors, patterns -------------------------------------------------

    #[test]
    fn error_codes_and_client_messages() {
        assert_eq!(AuthError::Expired.code(), "token_expired");
        assert_eq!(AuthError::Expired.client_message(), "token expired");
        assert!(AuthError::Expired.is_expired());
        let others = [
            AuthError::NotYetValid,
            AuthError::BadSignature,
            AuthError::BadAudience,
            AuthError::BadIssuer,
            AuthError::AlgorithmNotAllowed("none".into()),
            AuthError::Malformed("x".into()),
            AuthError::MissingSubject,
            AuthError::MissingExpiry,
            AuthError::MissingToken,
            AuthError::NoKey,
            AuthError::Config("x".into()),
            AuthError::Key("x".into()),
        ];
        let mut codes = vec!["token_expired"];
        for e in &others {
            assert_eq!(e.client_message(), "unauthorized");
            assert!(!e.is_expired());
            assert!(!e.to_string().is_empty());
            codes.push(e.code());
        }
        let n = codes.len();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), n, "codes are distinct");
    }

    #[test]
    fn channel_patterns() {
        assert!(channel_matches("news:*", "news:sport"));
        assert!(channel_matches("news:*", "news:"));
        assert!(!channel_matches("news:*", "news"));
        assert!(!channel_matches("news:*", "xnews:sport"));
        assert!(channel_matches("*", "anything"));
        assert!(channel_matches("chat", "chat"));
        assert!(!channel_matches("chat", "chat2"));
        assert!(!channel_matches("a*b", "axb"));
        assert!(channel_matches("a*b", "a*b"));
        assert!(!channel_matches("", ""));
    }

    #[test]
    fn claims_serialize_compactly() {
        let c = ClaimsBuilder::new("u").ttl(None).build(at(T0));
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"sub": "u", "iat": T0})
        );
        let c = ClaimsBuilder::new("u")
            .audience("a")
            .audience("b")
            .build(at(T0));
        assert_eq!(serde_json::to_value(&c).unwrap()["aud"], json!(["a", "b"]));
    }
}
