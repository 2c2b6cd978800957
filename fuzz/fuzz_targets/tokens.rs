//! Token validation (`auth/src/token.rs`, compiled here from its source with its own deps,
//! jsonwebtoken, ring, serde: the auth crate pulls berth-storage, far too slow to build with
//! instrumentation). A valid token is signed once with a fixed key; each input edits its
//! header and claims as JSON (alg `none`, `HS256`, other kids, other issuers and audiences,
//! expired, not yet valid, refresh, wrong types, unknown fields), signs the result with
//! berth's key, another key, HMAC keyed with berth's public key, or not at all, and then
//! edits raw bytes. Properties: no panic; a token verifies only if its signed part is one
//! berth's key signed; what verifies is a well-typed ES256 token of berth's kid and issuer
//! for the audience, in its time window, no refresh token, and the claims returned are the
//! ones signed; a token berth signed that the reference accepts (away from the time
//! boundaries) verifies.
#![no_main]

#[allow(dead_code)]
#[path = "../../auth/src/scope.rs"]
mod scope;
#[allow(dead_code)]
#[path = "../../auth/src/token.rs"]
mod token;

use arbitrary::Arbitrary;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use std::sync::OnceLock;
use token::{Claims, KeySet};

const SERVICE: &str = "berth";

struct Fixture {
    keys: KeySet,
    kid: String,
    own: EcdsaKeyPair,
    other: EcdsaKeyPair,
    public_point: Vec<u8>,
    jwks: String,
    header: Value,
    claims: Value,
    signed_input: String,
    token: String,
    now: i64,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-tokens-{}", std::process::id()));
        let path = dir.join("signing-key.pem");
        let keys = KeySet::load_or_create(&path, "berth").expect("key");
        let pem = std::fs::read_to_string(&path).expect("pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = STANDARD.decode(body).expect("base64");
        let rng = SystemRandom::new();
        let own =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &rng).expect("own");
        let other_doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("other");
        let other =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, other_doc.as_ref(), &rng)
                .expect("other");
        let _ = std::fs::remove_dir_all(&dir);
        let jwk = &keys.jwks()["keys"][0];
        let mut public_point = vec![4];
        for c in ["x", "y"] {
            public_point.extend(B64.decode(jwk[c].as_str().expect("coord")).expect("b64"));
        }
        let t = now();
        let claims = Claims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: SERVICE.into(),
            exp: t + 3600,
            nbf: t - 1,
            iat: t,
            jti: "j".into(),
            access: vec![scope::Access {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            refresh: None,
        };
        let token = keys.sign(&claims).expect("sign");
        let mut parts = token.split('.');
        let h = B64.decode(parts.next().expect("h")).expect("h");
        let c = B64.decode(parts.next().expect("c")).expect("c");
        let header: Value = serde_json::from_slice(&h).expect("header json");
        let kid = header["kid"].as_str().expect("kid").to_owned();
        assert!(
            keys.verify(&token, SERVICE, false).is_ok(),
            "the fixture verifies"
        );
        let signed_input = token.rsplit_once('.').expect("sig").0.to_owned();
        Fixture {
            jwks: keys.jwks().to_string(),
            keys,
            kid,
            own,
            other,
            public_point,
            header,
            claims: serde_json::from_slice(&c).expect("claims json"),
            signed_input,
            token,
            now: t,
        }
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum HField {
    Alg,
    Kid,
    Typ,
    Crit,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum CField {
    Iss,
    Sub,
    Aud,
    Exp,
    Nbf,
    Iat,
    Jti,
    Access,
    Refresh,
    Extra,
}

#[derive(Arbitrary, Debug, Clone)]
enum Val {
    Missing,
    Null,
    Bool(bool),
    /// Seconds from now.
    Time(i32),
    Int(i64),
    Word(u8),
    Text(String),
    List(Vec<u8>),
}

const WORDS: [&str; 12] = [
    "berth", "ES256", "none", "HS256", "RS256", "ES384", "JWT", "", "other", "BERTH", "kid", "None",
];

impl Val {
    fn json(&self, f: &Fixture) -> Option<Value> {
        Some(match self {
            Val::Missing => return None,
            Val::Null => Value::Null,
            Val::Bool(b) => json!(b),
            Val::Time(d) => json!(f.now + i64::from(*d)),
            Val::Int(i) => json!(i),
            Val::Word(w) if *w as usize % 14 == 12 => json!(f.kid),
            Val::Word(w) if *w as usize % 14 == 13 => json!(format!("{}x", f.kid)),
            Val::Word(w) => json!(WORDS[*w as usize % 14]),
            Val::Text(s) => json!(s),
            Val::List(l) => json!(l
                .iter()
                .map(|w| WORDS[*w as usize % 12])
                .collect::<Vec<_>>()),
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sign {
    /// The fixture's signature, over whatever the edits made.
    Keep,
    /// berth's own key.
    Own,
    /// A key berth does not trust.
    Other,
    /// HMAC-SHA256 keyed with berth's public key (the key-confusion attack).
    HmacPublicPoint,
    /// HMAC keyed with the JWKS text.
    HmacJwks,
    /// No signature (`alg: none`).
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Input {
    header: Vec<(HField, Val)>,
    claims: Vec<(CField, Val)>,
    sign: Sign,
    raw: Vec<(u16, u8)>,
}

fn set(obj: &mut Value, key: &str, v: Option<Value>) {
    let m = obj.as_object_mut().expect("object");
    match v {
        Some(v) => m.insert(key.to_owned(), v),
        None => m.remove(key),
    };
}

/// The rules, from the Docker token spec and berth's docs: ES256 by berth's kid, `iss` berth,
/// `aud` the service, `exp` after now and `nbf` before (5 s leeway), not a refresh token, and
/// claims of the right types. `Some(margin)`: accepted, with the distance to a time boundary.
fn reference(f: &Fixture, now: i64, header: &Value, claims: &Value) -> Option<i64> {
    if header.get("alg") != Some(&json!("ES256")) || header.get("kid") != Some(&json!(f.kid)) {
        return None;
    }
    // RFC 7515 section 4.1.11: berth understands no critical extension.
    if header.get("crit").is_some() {
        return None;
    }
    if !matches!(
        header.get("typ"),
        None | Some(Value::Null) | Some(Value::String(_))
    ) {
        return None;
    }
    let c: Claims = serde_json::from_value(claims.clone()).ok()?;
    if c.iss != "berth" || c.aud != SERVICE || c.refresh == Some(true) {
        return None;
    }
    if c.exp <= now - 5 || c.nbf > now + 5 {
        return None;
    }
    Some((c.exp - now).abs().min((c.nbf - now).abs()))
}

fuzz_target!(|inp: Input| {
    let f = fixture();
    let mut header = f.header.clone();
    for (k, v) in inp.header.iter().take(4) {
        let key = match k {
            HField::Alg => "alg",
            HField::Kid => "kid",
            HField::Typ => "typ",
            HField::Crit => "crit",
        };
        set(&mut header, key, v.json(f));
    }
    let mut claims = f.claims.clone();
    for (k, v) in inp.claims.iter().take(6) {
        let key = match k {
            CField::Iss => "iss",
            CField::Sub => "sub",
            CField::Aud => "aud",
            CField::Exp => "exp",
            CField::Nbf => "nbf",
            CField::Iat => "iat",
            CField::Jti => "jti",
            CField::Access => "access",
            CField::Refresh => "refresh",
            CField::Extra => "admin",
        };
        set(&mut claims, key, v.json(f));
    }
    let untouched = inp.header.is_empty() && inp.claims.is_empty();
    let input = if untouched {
        f.signed_input.clone()
    } else {
        format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(claims.to_string())
        )
    };
    let rng = SystemRandom::new();
    let sig = match inp.sign {
        Sign::Keep => f.token.rsplit_once('.').expect("sig").1.to_owned(),
        Sign::Own => B64.encode(f.own.sign(&rng, input.as_bytes()).expect("sign")),
        Sign::Other => B64.encode(f.other.sign(&rng, input.as_bytes()).expect("sign")),
        Sign::HmacPublicPoint | Sign::HmacJwks => {
            let secret = match inp.sign {
                Sign::HmacJwks => f.jwks.as_bytes(),
                _ => &f.public_point,
            };
            let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            B64.encode(ring::hmac::sign(&k, input.as_bytes()))
        }
        Sign::Empty => String::new(),
    };
    let mut bytes = format!("{input}.{sig}").into_bytes();
    for (pos, b) in inp.raw.iter().take(4) {
        if bytes.is_empty() {
            break;
        }
        let i = *pos as usize % bytes.len();
        bytes[i] = *b;
    }
    let token = String::from_utf8_lossy(&bytes).into_owned();
    let t = now();
    let r = f.keys.verify(&token, SERVICE, false);
    assert_eq!(
        r.is_ok(),
        f.keys.verify(&token, SERVICE, false).is_ok(),
        "deterministic"
    );
    let signed_part = token.rsplit_once('.').map(|(s, _)| s);
    let own_signed = signed_part == Some(f.signed_input.as_str())
        || (matches!(inp.sign, Sign::Own) && signed_part == Some(input.as_str()));
    match r {
        Ok(got) => {
            assert!(own_signed, "a token berth never signed verifies: {token:?}");
            let (h, c) = signed_part
                .expect("signed")
                .split_once('.')
                .expect("two parts");
            let h: Value = serde_json::from_slice(&B64.decode(h).expect("b64")).expect("json");
            let c: Value = serde_json::from_slice(&B64.decode(c).expect("b64")).expect("json");
            assert!(
                reference(f, t, &h, &c).is_some(),
                "accepted against the rules: {h} {c}"
            );
            let want: Claims = serde_json::from_value(c).expect("claims");
            assert_eq!(got, want, "the claims returned are the ones signed");
        }
        Err(_) => {
            if matches!(inp.sign, Sign::Own) && inp.raw.is_empty() {
                if let Some(margin) = reference(f, t, &header, &claims) {
                    assert!(
                        margin < 60,
                        "refused a token the rules accept: {header} {claims}"
                    );
                }
            }
        }
    }
});
