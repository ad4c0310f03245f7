//! Access-token validation: pure, a token and a key set in, the verified claims or the reason
//! out. The clock is a parameter, so every time rule is tested without waiting.
//!
//! The header is read before anything else, and only RS256 goes on: `none`, HS256 (the
//! public-key-as-HMAC-secret confusion) and every other algorithm are refused whatever the key
//! set holds. The signature is checked before any claim is believed; then tenant, audience and
//! time. Names (`upn`, `email`, `preferred_username`) are not read at all: they never
//! authorise anything.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest token accepted: Entra access tokens are 1–3 KiB; a group-heavy one stays under 8.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Signing keys by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        kids.sort_unstable();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl KeySet {
    /// Parses a JSON Web Key Set, keeping the RSA signing keys. A set with none is an error:
    /// replacing a good set with it would refuse every login.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let raw: RawJwks = serde_json::from_slice(json).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let mut keys = HashMap::new();
        for k in raw.keys {
            let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else { continue };
            if k.kty != "RSA" || k.usage.as_deref().is_some_and(|u| u != "sig") {
                continue;
            }
            // One key that does not decode must not hold up the others (or a rotation).
            match DecodingKey::from_rsa_components(&n, &e) {
                Ok(key) => {
                    keys.insert(kid, key);
                }
                Err(e) => {
                    tracing::warn!(kid = %shown(&kid), error = %e, "an Entra signing key does not decode; skipped")
                }
            }
        }
        if keys.is_empty() {
            return Err("the key set holds no RSA signing key".into());
        }
        Ok(Self { keys })
    }

    /// Whether `kid` is in the set.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it holds none (before the first fetch).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a token must be bound to.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The tenant, lower-case.
    pub tenant: String,
    /// Accepted audiences, without trailing slashes.
    pub audiences: Vec<String>,
    /// Allowed clock difference for `exp` and `nbf`.
    pub skew: Duration,
}

/// Why a token was refused. Each says what the user can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not three base64url parts with JSON in them.
    #[error(
        "the password is not a Microsoft Entra access token (a JWT); get one with `az account get-access-token --resource-type oss-rdbms`"
    )]
    Malformed,
    /// Longer than [`MAX_TOKEN_LEN`].
    #[error("the token is longer than {MAX_TOKEN_LEN} bytes")]
    TooLong,
    /// Not RS256.
    #[error("the token is signed with \"{0}\"; only RS256 tokens issued by Microsoft Entra ID are accepted")]
    Algorithm(String),
    /// The header names no key, or one that the key set does not hold.
    #[error("the token's signing key \"{0}\" is not among Microsoft Entra ID's published keys")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token's signature is not valid")]
    BadSignature,
    /// `tid` or `iss` names another tenant.
    #[error(
        "the token was issued by tenant {0}, not this server's tenant; sign in to the right directory (az login --tenant ...)"
    )]
    WrongTenant(String),
    /// `aud` is not one of the audiences.
    #[error("the token is for audience \"{0}\", not this server; request it with --resource-type oss-rdbms")]
    WrongAudience(String),
    /// `exp` plus the skew has passed.
    #[error("the token expired at {}; get a new one", httpdate::fmt_http_date(*.0))]
    Expired(SystemTime),
    /// `nbf` minus the skew is still ahead.
    #[error("the token is not valid before {}; check this machine's clock", httpdate::fmt_http_date(*.0))]
    NotYetValid(SystemTime),
    /// A claim the checks need is missing.
    #[error("the token has no \"{0}\" claim")]
    MissingClaim(&'static str),
}

impl TokenError {
    /// A short stable label for logs, events and metrics.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::TooLong => "too_long",
            Self::Algorithm(_) => "algorithm",
            Self::UnknownKey(_) => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongTenant(_) => "wrong_tenant",
            Self::WrongAudience(_) => "wrong_audience",
            Self::Expired(_) => "expired",
            Self::NotYetValid(_) => "not_yet_valid",
            Self::MissingClaim(_) => "missing_claim",
        }
    }
}

/// Who a token names, for logs and events: from a token whose signature verified, or `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    /// The tenant.
    pub tid: String,
    /// The object id.
    pub oid: Option<String>,
    /// The client application.
    pub appid: Option<String>,
}

/// A refused token: why, and whom it named if its signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub error: TokenError,
    /// Whom, if it was signed by a trusted key.
    pub subject: Option<Subject>,
}

impl From<TokenError> for Rejected {
    fn from(error: TokenError) -> Self {
        Self { error, subject: None }
    }
}

/// The claims of a verified token that flexgate uses. No name claim is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The tenant.
    pub tid: String,
    /// The user's or service principal's object id.
    pub oid: String,
    /// The client application (`appid` in v1, `azp` in v2).
    pub appid: Option<String>,
    /// `app` for an app-only token.
    pub idtyp: Option<String>,
    /// Whether the token carries delegated scopes (`scp`): user tokens do, app-only ones not.
    pub delegated: bool,
    /// The group ids the token lists, when it lists them (no overage).
    pub groups: Option<Vec<String>>,
    /// When the token expires.
    pub exp: SystemTime,
}

impl Verified {
    /// Whether this is an app-only token (a service principal or managed identity).
    pub fn is_app(&self) -> bool {
        // `idtyp` is an optional claim; without it an app-only token is the one without `scp`.
        match self.idtyp.as_deref() {
            Some(t) => t == "app",
            None => !self.delegated,
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    tid: Option<String>,
    scp: Option<String>,
    aud: Option<Audience>,
    exp: Option<u64>,
    nbf: Option<u64>,
    oid: Option<String>,
    appid: Option<String>,
    azp: Option<String>,
    idtyp: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(rename = "_claim_names")]
    claim_names: Option<serde_json::Value>,
}

/// A header value fit for an ERR packet and a log line: it comes from an unverified token, so
/// it is cut short and stripped of control characters.
fn shown(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn header(token: &[u8]) -> Result<Header, TokenError> {
    let first = token.split(|b| *b == b'.').next().ok_or(TokenError::Malformed)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(first).map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)
}

/// Validates `token` against `keys` and `rules` at `now`.
pub fn validate(token: &[u8], keys: &KeySet, rules: &Rules, now: SystemTime) -> Result<Verified, Rejected> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong.into());
    }
    if token.iter().filter(|b| **b == b'.').count() != 2 {
        return Err(TokenError::Malformed.into());
    }
    let h = header(token)?;
    if h.alg != "RS256" {
        return Err(TokenError::Algorithm(shown(&h.alg)).into());
    }
    let kid = h.kid.unwrap_or_default();
    let Some(key) = keys.keys.get(&kid) else { return Err(TokenError::UnknownKey(shown(&kid)).into()) };
    // jsonwebtoken checks the algorithm and the signature; flexgate checks every claim itself,
    // with its own clock and its own messages.
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let claims = match jsonwebtoken::decode::<Claims>(token, key, &v) {
        Ok(t) => t.claims,
        Err(e) => {
            let error = match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => TokenError::BadSignature,
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => TokenError::Algorithm(shown(&h.alg)),
                _ => TokenError::Malformed,
            };
            return Err(error.into());
        }
    };
    let tid = claims.tid.ok_or(TokenError::MissingClaim("tid"))?.to_ascii_lowercase();
    let oid = claims.oid.map(|o| o.to_ascii_lowercase());
    let appid = claims.appid.or(claims.azp).map(|a| a.to_ascii_lowercase());
    let subject = Subject { tid: tid.clone(), oid: oid.clone(), appid: appid.clone() };
    let reject = |error| Rejected { error, subject: Some(subject.clone()) };
    if tid != rules.tenant {
        return Err(reject(TokenError::WrongTenant(tid)));
    }
    let iss = claims.iss.ok_or_else(|| reject(TokenError::MissingClaim("iss")))?;
    let v1 = format!("https://sts.windows.net/{}/", rules.tenant);
    let v2 = format!("https://login.microsoftonline.com/{}/v2.0", rules.tenant);
    if !iss.eq_ignore_ascii_case(&v1) && !iss.eq_ignore_ascii_case(&v2) {
        return Err(reject(TokenError::WrongTenant(iss)));
    }
    let auds = match claims.aud.ok_or_else(|| reject(TokenError::MissingClaim("aud")))? {
        Audience::One(a) => vec![a],
        Audience::Many(a) => a,
    };
    if !auds.iter().any(|a| rules.audiences.iter().any(|want| a.trim_end_matches('/') == want)) {
        return Err(reject(TokenError::WrongAudience(auds.join(" "))));
    }
    let exp = claims.exp.ok_or_else(|| reject(TokenError::MissingClaim("exp")))?;
    // A time past any clock is malformed, not a reason to overflow. `now` is the host's clock
    // and the skew at most an hour, so `now + skew` cannot overflow.
    let at = |secs: u64| {
        SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)).filter(|t| t.checked_add(rules.skew).is_some())
    };
    let exp = at(exp).ok_or_else(|| reject(TokenError::Malformed))?;
    if now > exp + rules.skew {
        return Err(reject(TokenError::Expired(exp)));
    }
    if let Some(nbf) = claims.nbf {
        let nbf = at(nbf).ok_or_else(|| reject(TokenError::Malformed))?;
        if now + rules.skew < nbf {
            return Err(reject(TokenError::NotYetValid(nbf)));
        }
    }
    let oid = oid.ok_or_else(|| reject(TokenError::MissingClaim("oid")))?;
    // An overage (`_claim_names.groups`) means the list is incomplete: it must not be read as
    // "not a member".
    let overage = claims.claim_names.as_ref().is_some_and(|c| c.get("groups").is_some());
    let groups =
        claims.groups.filter(|_| !overage).map(|g| g.into_iter().map(|g| g.to_ascii_lowercase()).collect::<Vec<_>>());
    Ok(Verified { tid, oid, appid, idtyp: claims.idtyp, delegated: claims.scp.is_some(), groups, exp })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rsa::KeyPair;
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
    use serde_json::json;

    use super::*;

    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const OID: &str = "9a3b7c2e-1f4d-4e6a-8b5c-0d2e4f6a8b1c";
    const AUD: &str = "https://ossrdbms-aad.database.windows.net";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    struct Key {
        pair: KeyPair,
        kid: &'static str,
    }

    impl Key {
        fn new(kid: &'static str) -> Self {
            let pair = KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap_or_else(|e| panic!("{e}"));
            Self { pair, kid }
        }

        fn set(&self) -> KeySet {
            let public = self.pair.public_key();
            let n = public.modulus().big_endian_without_leading_zero();
            let e = public.exponent().big_endian_without_leading_zero();
            let json = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": self.kid, "n": b64(n), "e": b64(e)}]});
            KeySet::parse(json.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}"))
        }

        fn sign_with(&self, header: &serde_json::Value, claims: &serde_json::Value) -> String {
            let message = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
            let mut sig = vec![0; self.pair.public_modulus_len()];
            let rng = aws_lc_rs::rand::SystemRandom::new();
            self.pair.sign(&RSA_PKCS1_SHA256, &rng, message.as_bytes(), &mut sig).unwrap_or_else(|e| panic!("{e}"));
            format!("{message}.{}", b64(&sig))
        }

        fn sign(&self, claims: &serde_json::Value) -> String {
            self.sign_with(&json!({"typ": "JWT", "alg": "RS256", "kid": self.kid}), claims)
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn claims(version: u8) -> serde_json::Value {
        let t = 1_800_000_000u64;
        let iss = if version == 1 {
            format!("https://sts.windows.net/{TENANT}/")
        } else {
            format!("https://login.microsoftonline.com/{TENANT}/v2.0")
        };
        json!({"aud": AUD, "iss": iss, "tid": TENANT, "oid": OID, "iat": t - 60, "nbf": t - 60, "exp": t + 3600,
               "upn": "alice@contoso.com", "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46", "ver": format!("{version}.0")})
    }

    fn rules() -> Rules {
        Rules { tenant: TENANT.into(), audiences: vec![AUD.into()], skew: Duration::from_secs(300) }
    }

    fn check(key: &Key, token: &str) -> Result<Verified, TokenError> {
        validate(token.as_bytes(), &key.set(), &rules(), now()).map_err(|r| r.error)
    }

    #[test]
    fn v1_and_v2_tokens_verify_and_keep_only_ids() {
        let k = Key::new("k1");
        for v in [1, 2] {
            let got = check(&k, &k.sign(&claims(v))).unwrap_or_else(|e| panic!("v{v}: {e}"));
            assert_eq!(got.oid, OID);
            assert_eq!(got.tid, TENANT);
            assert_eq!(got.appid.as_deref(), Some("04b07795-8ddb-461a-bbee-02f9e1bf7b46"));
            assert_eq!(got.exp, now() + Duration::from_secs(3600));
            assert!(!format!("{got:?}").contains("alice"), "no name claim is kept");
        }
        // The audience with a trailing slash is the same audience.
        let mut c = claims(1);
        c["aud"] = json!(format!("{AUD}/"));
        assert!(check(&k, &k.sign(&c)).is_ok());
    }

    #[test]
    fn only_rs256_is_accepted_whatever_the_header_says() {
        let k = Key::new("k1");
        let body = b64(claims(1).to_string().as_bytes());
        let none = format!("{}.{body}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
        assert_eq!(check(&k, &none), Err(TokenError::Algorithm("none".into())));
        // HS256 keyed with the public key's bytes: the classic confusion.
        let header = b64(br#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let msg = format!("{header}.{body}");
        let hmac_key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, k.pair.public_key().as_ref());
        let tag = aws_lc_rs::hmac::sign(&hmac_key, msg.as_bytes());
        let hs = format!("{msg}.{}", b64(tag.as_ref()));
        assert_eq!(check(&k, &hs), Err(TokenError::Algorithm("HS256".into())));
        assert_eq!(check(&k, "not a token"), Err(TokenError::Malformed));
        assert_eq!(check(&k, "a.b.c"), Err(TokenError::Malformed));
        assert_eq!(check(&k, &"x".repeat(MAX_TOKEN_LEN + 1)), Err(TokenError::TooLong));
    }

    #[test]
    fn signature_and_key_id_are_checked_before_any_claim() {
        let k = Key::new("k1");
        let other = Key::new("k2");
        // A key the set does not hold.
        assert_eq!(check(&k, &other.sign(&claims(1))), Err(TokenError::UnknownKey("k2".into())));
        // The right kid, the wrong key.
        let forged = other.sign_with(&json!({"alg": "RS256", "kid": "k1"}), &claims(1));
        assert_eq!(check(&k, &forged), Err(TokenError::BadSignature));
        // A tampered payload under a good signature.
        let good = k.sign(&claims(1));
        let mut c = claims(1);
        c["oid"] = json!("00000000-0000-0000-0000-000000000001");
        let parts: Vec<&str> = good.split('.').collect();
        let tampered = format!("{}.{}.{}", parts[0], b64(c.to_string().as_bytes()), parts[2]);
        assert_eq!(check(&k, &tampered), Err(TokenError::BadSignature));
        // Unsigned claims are not reported as anyone's.
        let r = validate(tampered.as_bytes(), &k.set(), &rules(), now()).err();
        assert_eq!(r.and_then(|r| r.subject), None);
    }

    #[test]
    fn tenant_audience_and_time_rules() {
        let k = Key::new("k1");
        let other = "11111111-2222-3333-4444-555555555555";
        let mut c = claims(2);
        c["tid"] = json!(other);
        assert_eq!(check(&k, &k.sign(&c)), Err(TokenError::WrongTenant(other.into())));
        // The tid is right but the issuer names another tenant.
        let mut c = claims(2);
        c["iss"] = json!(format!("https://login.microsoftonline.com/{other}/v2.0"));
        assert!(matches!(check(&k, &k.sign(&c)), Err(TokenError::WrongTenant(_))));
        let mut c = claims(1);
        c["aud"] = json!("https://management.azure.com/");
        assert!(matches!(check(&k, &k.sign(&c)), Err(TokenError::WrongAudience(_))));
        let t = 1_800_000_000u64;
        for (exp, nbf, want) in [
            (t - 299, t - 3600, None),
            (t - 301, t - 3600, Some("expired")),
            (t + 3600, t + 299, None),
            (t + 3600, t + 301, Some("not_yet_valid")),
        ] {
            let mut c = claims(1);
            c["exp"] = json!(exp);
            c["nbf"] = json!(nbf);
            let got = check(&k, &k.sign(&c));
            assert_eq!(got.as_ref().err().map(TokenError::as_str), want, "exp {exp} nbf {nbf}: {got:?}");
        }
        // A refusal after the signature names whom the token was for.
        let mut c = claims(1);
        c["exp"] = json!(t - 1000);
        let r = validate(k.sign(&c).as_bytes(), &k.set(), &rules(), now()).err();
        assert_eq!(r.and_then(|r| r.subject).and_then(|s| s.oid).as_deref(), Some(OID));
    }

    #[test]
    fn absurd_times_and_hostile_header_values_are_refused_without_panic_or_echo() {
        let k = Key::new("k1");
        let mut c = claims(1);
        c["exp"] = json!(u64::MAX);
        assert_eq!(check(&k, &k.sign(&c)), Err(TokenError::Malformed));
        let mut c = claims(1);
        c["nbf"] = json!(u64::MAX);
        assert_eq!(check(&k, &k.sign(&c)), Err(TokenError::Malformed));
        let long = format!("evil\nkid{}", "x".repeat(5000));
        let forged = k.sign_with(&json!({"alg": "RS256", "kid": long}), &claims(1));
        let Err(TokenError::UnknownKey(shown)) = check(&k, &forged) else { panic!("not an unknown key") };
        assert!(shown.len() <= 64 && !shown.contains('\n'), "{shown:?}");
        // Without idtyp, an app-only token is the one without scp.
        let mut c = claims(1);
        c.as_object_mut().map(|o| o.remove("idtyp"));
        assert!(check(&k, &k.sign(&c)).is_ok_and(|v| v.is_app()));
        c["scp"] = json!("user_impersonation");
        assert!(check(&k, &k.sign(&c)).is_ok_and(|v| !v.is_app()));
    }

    #[test]
    fn groups_are_kept_unless_the_token_overflowed() {
        let k = Key::new("k1");
        let mut c = claims(1);
        c["groups"] = json!(["AAAAAAAA-0000-0000-0000-000000000000"]);
        let got = check(&k, &k.sign(&c)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.groups, Some(vec!["aaaaaaaa-0000-0000-0000-000000000000".to_owned()]));
        c["_claim_names"] = json!({"groups": "src1"});
        assert_eq!(check(&k, &k.sign(&c)).unwrap_or_else(|e| panic!("{e}")).groups, None);
    }

    #[test]
    fn a_key_set_without_rsa_signing_keys_is_refused() {
        assert!(KeySet::parse(br#"{"keys":[{"kty":"EC","kid":"x","crv":"P-256"}]}"#).is_err());
        assert!(KeySet::parse(b"<html>").is_err());
    }
}
