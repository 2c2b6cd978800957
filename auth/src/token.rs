//! Registry tokens (JWT, Docker token spec `jwt.md`): the signing key berth creates on first
//! start, the keys it trusts, minting and verification.

use crate::scope::Access;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Why a token is refused. The message is safe to show: it never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or a JWT berth does not accept.
    #[error("malformed token")]
    Malformed,
    /// Signed with an algorithm berth does not accept (e.g. `none`).
    #[error("token algorithm not accepted")]
    Algorithm,
    /// No trusted key has this `kid` (or none fits).
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// Signature, issuer, audience or time checks failed.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A refresh token used as an access token, or the reverse.
    #[error("wrong kind of token")]
    Kind,
    /// Key files.
    #[error("signing key: {0}")]
    Key(String),
}

/// The claims of berth's tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// Issuer.
    pub iss: String,
    /// Subject: the user, `robot$<name>`, or empty for anonymous.
    pub sub: String,
    /// Audience: the registry's service name.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: i64,
    /// Not before.
    pub nbf: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id.
    pub jti: String,
    /// Granted access.
    #[serde(default)]
    pub access: Vec<Access>,
    /// Set on refresh tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<bool>,
}

struct Trusted {
    issuer: String,
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// berth's signing key plus every key it trusts.
pub struct KeySet {
    kid: String,
    issuer: String,
    encoding: EncodingKey,
    own: DecodingKey,
    jwk: serde_json::Value,
    trusted: Vec<Trusted>,
}

/// Unix seconds now (the clock `exp`, `nbf` and `iat` are on).
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok()
}

fn jwks_keys(issuer: &str, jwks_json: &str) -> Result<Vec<Trusted>, TokenError> {
    let set: jsonwebtoken::jwk::JwkSet =
        serde_json::from_str(jwks_json).map_err(|e| TokenError::Key(format!("JWKS: {e}")))?;
    let mut out = Vec::new();
    for k in &set.keys {
        let key =
            DecodingKey::from_jwk(k).map_err(|e| TokenError::Key(format!("JWKS key: {e}")))?;
        let alg = match &k.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
            _ => return Err(TokenError::Key("JWKS: only EC P-256 and RSA keys".into())),
        };
        out.push(Trusted {
            issuer: issuer.to_owned(),
            kid: k.common.key_id.clone(),
            alg,
            key,
        });
    }
    Ok(out)
}

fn pem_key(issuer: &str, pem: &str) -> Result<Trusted, TokenError> {
    let (alg, key) = match DecodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(k) => (Algorithm::ES256, k),
        Err(_) => (
            Algorithm::RS256,
            DecodingKey::from_rsa_pem(pem.as_bytes())
                .map_err(|e| TokenError::Key(format!("public key: {e}")))?,
        ),
    };
    Ok(Trusted {
        issuer: issuer.to_owned(),
        kid: None,
        alg,
        key,
    })
}

impl KeySet {
    /// Loads the signing key at `path`, creating a new P-256 key (mode 0600) if absent.
    pub fn load_or_create(path: &Path, issuer: &str) -> Result<Self, TokenError> {
        let key_err = |e: String| TokenError::Key(format!("{}: {e}", path.display()));
        let der = if path.exists() {
            let pem = std::fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
            pem_decode(&pem).ok_or_else(|| key_err("not a PEM file".into()))?
        } else {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .map_err(|_| key_err("cannot generate a key".into()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| key_err(e.to_string()))?;
            }
            write_private(path, &pem_encode("PRIVATE KEY", doc.as_ref()))
                .map_err(|e| key_err(e.to_string()))?;
            doc.as_ref().to_vec()
        };
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
                .map_err(|_| key_err("not a PKCS#8 P-256 key".into()))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            return Err(key_err("unexpected public key encoding".into()));
        }
        let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..65]));
        let kid = hex::encode(&Sha256::digest(point)[..12]);
        let own = DecodingKey::from_ec_components(&x, &y).map_err(|e| key_err(e.to_string()))?;
        Ok(Self {
            jwk: serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"}),
            encoding: EncodingKey::from_ec_der(&der),
            own,
            kid,
            issuer: issuer.to_owned(),
            trusted: Vec::new(),
        })
    }

    /// Trusts the keys of a JWKS file for tokens whose `iss` is `issuer`.
    pub fn trust_jwks(&mut self, issuer: &str, jwks_json: &str) -> Result<(), TokenError> {
        self.trusted.extend(jwks_keys(issuer, jwks_json)?);
        Ok(())
    }

    /// Trusts one PEM public key (EC P-256 or RSA) for tokens whose `iss` is `issuer`.
    pub fn trust_pem(&mut self, issuer: &str, pem: &str) -> Result<(), TokenError> {
        self.trusted.push(pem_key(issuer, pem)?);
        Ok(())
    }

    /// Checks a JWKS text as [`KeySet::trust_jwks`] reads it (for `berth check-config`).
    pub fn check_jwks(jwks_json: &str) -> Result<(), TokenError> {
        jwks_keys("", jwks_json).map(|_| ())
    }

    /// Checks a PEM public key as [`KeySet::trust_pem`] reads it.
    pub fn check_pem(pem: &str) -> Result<(), TokenError> {
        pem_key("", pem).map(|_| ())
    }

    /// The public keys as a JWK set.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    /// Signs claims with berth's key.
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(self.kid.clone());
        h.typ = Some("JWT".into());
        jsonwebtoken::encode(&h, claims, &self.encoding).map_err(|e| TokenError::Key(e.to_string()))
    }

    /// Mints a token for `sub` valid `ttl_secs`.
    pub fn issue(
        &self,
        sub: &str,
        aud: &str,
        access: Vec<Access>,
        ttl_secs: i64,
        refresh: bool,
    ) -> Result<(String, Claims), TokenError> {
        let now = now_secs();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: aud.to_owned(),
            exp: now + ttl_secs,
            nbf: now - 1,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
            refresh: refresh.then_some(true),
        };
        Ok((self.sign(&claims)?, claims))
    }

    /// Verifies a token for `service`: signature by a trusted key, algorithm, issuer,
    /// audience, expiry and not-before. `refresh` says which kind is expected. Refresh tokens
    /// are berth's own only: a trusted external issuer's token is never one, whatever its
    /// claims say (it would otherwise be exchanged for a berth token of any subject).
    pub fn verify(&self, token: &str, service: &str, refresh: bool) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // RFC 7515 section 4.1.11: extensions listed in `crit` must be understood or the JWS
        // refused. berth understands none; jsonwebtoken's Header drops the field unread.
        if has_crit(token) {
            return Err(TokenError::Malformed);
        }
        let mut candidates: Vec<(&DecodingKey, Algorithm, &str)> = Vec::new();
        if header.kid.as_deref() == Some(self.kid.as_str()) {
            candidates.push((&self.own, Algorithm::ES256, &self.issuer));
        }
        for t in self.trusted.iter().filter(|_| !refresh) {
            if t.kid.is_none() || t.kid == header.kid {
                candidates.push((&t.key, t.alg, &t.issuer));
            }
        }
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        if !candidates.iter().any(|(_, alg, _)| *alg == header.alg) {
            return Err(TokenError::Algorithm);
        }
        let mut last = TokenError::UnknownKey;
        for (key, alg, iss) in candidates.into_iter().filter(|(_, a, _)| *a == header.alg) {
            let mut v = Validation::new(alg);
            v.set_audience(&[service]);
            v.set_issuer(&[iss]);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            v.validate_nbf = true;
            v.leeway = 5;
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(d) => {
                    if d.claims.refresh.unwrap_or(false) != refresh {
                        return Err(TokenError::Kind);
                    }
                    return Ok(d.claims);
                }
                Err(e) => last = TokenError::Invalid(e.to_string()),
            }
        }
        Err(last)
    }
}

/// Whether the JOSE header of `token` has a `crit` parameter (any value, `null` included).
fn has_crit(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or("");
    B64.decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&b).ok())
        .is_none_or(|h| h.contains_key("crit"))
}

#[cfg(unix)]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

#[cfg(not(unix))]
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let ks = KeySet::load_or_create(&path, "berth").unwrap();
        let again = KeySet::load_or_create(&path, "berth").unwrap();
        assert_eq!(ks.kid, again.kid, "the key is kept");
        let access = vec![Access {
            kind: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into()],
        }];
        let (tok, _) = ks
            .issue("alice", "berth", access.clone(), 300, false)
            .unwrap();
        let c = again.verify(&tok, "berth", false).unwrap();
        assert_eq!(c.access, access);
        assert!(matches!(
            ks.verify(&tok, "other", false),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            ks.verify(&tok, "berth", true),
            Err(TokenError::Kind)
        ));
        // A different key with the same kid fails the signature check.
        let other = KeySet::load_or_create(&dir.path().join("o.pem"), "berth").unwrap();
        let mut forged = other.issue("alice", "berth", vec![], 300, false).unwrap().1;
        forged.sub = "mallory".into();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(ks.kid.clone());
        let t = jsonwebtoken::encode(&h, &forged, &other.encoding).unwrap();
        assert!(ks.verify(&t, "berth", false).is_err());
        // Expired.
        let (_, mut c) = ks.issue("alice", "berth", vec![], 300, false).unwrap();
        c.exp = berth_storage::now_secs() - 3600;
        let t = ks.sign(&c).unwrap();
        assert!(ks.verify(&t, "berth", false).is_err());
        // alg none.
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(serde_json::to_vec(&c).unwrap())
        );
        assert!(ks.verify(&none, "berth", false).is_err());
        assert!(ks.verify("garbage", "berth", false).is_err());
    }

    /// RFC 7515 section 4.1.11: a JWS whose `crit` header lists extensions the recipient does
    /// not understand must be refused. berth understands none, so any `crit` is refused, even in
    /// a token its own key signed (the fuzz target `tokens` found it accepted).
    #[test]
    fn a_crit_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ks = KeySet::load_or_create(&dir.path().join("k.pem"), "berth").unwrap();
        let (_, c) = ks.issue("alice", "berth", vec![], 300, false).unwrap();
        let signed = |header: String| {
            let input = format!(
                "{}.{}",
                B64.encode(header),
                B64.encode(serde_json::to_vec(&c).unwrap())
            );
            let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &ks.encoding, Algorithm::ES256)
                .unwrap();
            format!("{input}.{sig}")
        };
        let plain = signed(format!(r#"{{"alg":"ES256","kid":"{}"}}"#, ks.kid));
        assert!(
            ks.verify(&plain, "berth", false).is_ok(),
            "the control verifies"
        );
        for crit in [r#"["exp"]"#, r#"["x-unknown"]"#, "[]", "null", r#""b64""#] {
            let t = signed(format!(
                r#"{{"alg":"ES256","kid":"{}","crit":{crit},"x-unknown":1,"exp":1}}"#,
                ks.kid
            ));
            assert!(
                matches!(ks.verify(&t, "berth", false), Err(TokenError::Malformed)),
                "crit {crit} accepted"
            );
        }
    }

    #[test]
    fn refresh_tokens_are_never_external() {
        let dir = tempfile::tempdir().unwrap();
        let mut ks = KeySet::load_or_create(&dir.path().join("k.pem"), "berth").unwrap();
        let corp = KeySet::load_or_create(&dir.path().join("corp.pem"), "corp").unwrap();
        ks.trust_jwks("corp", &corp.jwks().to_string()).unwrap();
        // A trusted issuer's access token is accepted...
        let (tok, _) = corp.issue("ext-user", "berth", vec![], 300, false).unwrap();
        assert_eq!(ks.verify(&tok, "berth", false).unwrap().sub, "ext-user");
        // ...but its refresh:true token, even for sub admin, is no refresh token here.
        let (tok, _) = corp.issue("admin", "berth", vec![], 300, true).unwrap();
        assert!(ks.verify(&tok, "berth", true).is_err());
        // Nor does it pass as an access token.
        assert!(ks.verify(&tok, "berth", false).is_err());
        // berth's own refresh token still is one.
        let (tok, _) = ks.issue("admin", "berth", vec![], 300, true).unwrap();
        assert_eq!(ks.verify(&tok, "berth", true).unwrap().sub, "admin");
        // Trusted by PEM too (an issuer whose keys carry no kid).
        let mut ks2 = KeySet::load_or_create(&dir.path().join("k2.pem"), "berth").unwrap();
        let corp_pem = {
            let x = B64.decode(corp.jwk["x"].as_str().unwrap()).unwrap();
            let y = B64.decode(corp.jwk["y"].as_str().unwrap()).unwrap();
            // SubjectPublicKeyInfo for a P-256 point: fixed prefix + 04 || x || y.
            let mut der =
                hex::decode("3059301306072a8648ce3d020106082a8648ce3d030107034200").unwrap();
            der.push(4);
            der.extend(x);
            der.extend(y);
            pem_encode("PUBLIC KEY", &der)
        };
        ks2.trust_pem("corp", &corp_pem).unwrap();
        let (tok, _) = corp.issue("admin", "berth", vec![], 300, true).unwrap();
        assert!(ks2.verify(&tok, "berth", true).is_err());
        let (tok, _) = corp.issue("ext", "berth", vec![], 300, false).unwrap();
        assert!(
            ks2.verify(&tok, "berth", false).is_ok(),
            "the PEM key is trusted"
        );
    }
}
