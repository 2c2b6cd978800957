"""Helpers for berth's access-control end-to-end tests (tests/e2e/test_auth.py, test_docker_auth.py).

The contract is docs/AUTH.md: `[auth] mode = "token"`, users/robots/grants made with the `berth` CLI on
the server's own data directory, bearer tokens from `/auth/token`, keys published at `/auth/jwks.json`.
Nothing here is mocked: every helper drives the real binary or talks HTTP to a running `berth serve`.
"""
import base64
import datetime
import ipaddress
import json
import re
import subprocess
import time
import uuid

import jwt
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import BERTH_BIN, Berth

SERVICE = "berth"
ISSUER = "berth"


# ---------------------------------------------------------------- configuration

def auth_config(service=None, issuer=None, realm=None, token_ttl_secs=None, refresh_ttl_secs=None,
                anonymous_pull=None, failed_login_limit=None, tls=None, extra=""):
    """TOML text for a registry in token mode. tls: (cert_path, key_path) or None."""
    lines = ["[auth]", 'mode = "token"']
    if service is not None:
        lines.append(f"service = {json.dumps(service)}")
    if issuer is not None:
        lines.append(f"issuer = {json.dumps(issuer)}")
    if realm is not None:
        lines.append(f"realm = {json.dumps(realm)}")
    if token_ttl_secs is not None:
        lines.append(f"token_ttl_secs = {int(token_ttl_secs)}")
    if refresh_ttl_secs is not None:
        lines.append(f"refresh_ttl_secs = {int(refresh_ttl_secs)}")
    if anonymous_pull is not None:
        lines.append("anonymous_pull = [" + ", ".join(json.dumps(p) for p in anonymous_pull) + "]")
    if failed_login_limit is not None:
        lines.append(f"failed_login_limit = {int(failed_login_limit)}")
    if tls is not None:
        cert, key = tls
        lines += ["[tls]", f"cert = {json.dumps(str(cert))}", f"key = {json.dumps(str(key))}"]
    text = "\n".join(lines) + "\n"
    if extra:
        text += extra if extra.endswith("\n") else extra + "\n"
    return text


def start_auth_berth(data_dir, **cfg):
    """Starts a token-mode berth outside of the function-scoped berth_factory (for module fixtures)."""
    return Berth(data_dir, config=auth_config(**cfg)).start()


# ---------------------------------------------------------------- the CLI

class CliError(AssertionError):
    pass


def cli(berth, *args, input=None, check=True, timeout=60):
    """Runs `berth <args> --data-dir <the server's data dir>`; returns the CompletedProcess."""
    argv = [BERTH_BIN, *args, "--data-dir", str(berth.data_dir)]
    p = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and p.returncode != 0:
        raise CliError(f"berth CLI failed (rc={p.returncode}): {argv}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def add_user(berth, name, password=None, admin=False, groups=(), stdin=False):
    """`berth user add`. Returns the password used."""
    password = password or ("pw-" + uuid.uuid4().hex)
    args = ["user", "add", name]
    if admin:
        args.append("--admin")
    for g in groups:
        args += ["--group", g]
    if stdin:
        cli(berth, *args, "--password-stdin", input=password + "\n")
    else:
        cli(berth, *args, "--password", password)
    return password


def grant(berth, repo, actions, user=None, group=None, robot=None, anonymous=False):
    """`berth grant`. actions: "pull,push" or a list."""
    if not isinstance(actions, str):
        actions = ",".join(actions)
    if user is not None:
        who = ["--user", user]
    elif group is not None:
        who = ["--group", group]
    elif robot is not None:
        who = ["--robot", robot]
    else:
        assert anonymous
        who = ["--anonymous"]
    cli(berth, "grant", *who, "--repo", repo, "--actions", actions)


class Robot:
    def __init__(self, name, secret, output):
        self.name = name            # the name given to --name
        self.secret = secret
        self.output = output        # everything the CLI printed

    @property
    def username(self):
        return f"robot${self.name}"


def parse_robot_secret(output, name):
    """The secret from `berth robot create` output (JSON, `key: value` lines, or a bare token)."""
    text = output.strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            for k in ("secret", "password", "token"):
                if isinstance(obj.get(k), str) and obj[k]:
                    return obj[k]
    except ValueError:
        pass
    for line in text.splitlines():
        m = re.match(r"\s*(?:secret|password|token)\s*[:=]\s*(\S+)\s*$", line, re.I)
        if m:
            return m.group(1)
    # otherwise: the longest whitespace-separated word that is not the robot's name
    words = [w for w in re.split(r"\s+", text)
             if w and w not in (name, f"robot${name}") and not w.endswith(":") and len(w) >= 16]
    if not words:
        raise AssertionError(f"no secret in `berth robot create` output:\n{output}")
    return max(words, key=len)


def create_robot(berth, name, allows, expires=None):
    """`berth robot create --name NAME --allow A [--allow B] [--expires E]`. Returns a Robot."""
    args = ["robot", "create", "--name", name]
    for a in allows:
        args += ["--allow", a]
    if expires is not None:
        args += ["--expires", expires]
    p = cli(berth, *args)
    out = p.stdout
    return Robot(name, parse_robot_secret(out, name), out + p.stderr)


# ---------------------------------------------------------------- tokens

def token_url(berth):
    return f"{berth.url}/auth/token"


def get_token_response(berth, scopes=(), user=None, password=None, service=SERVICE, verify=True, extra=None):
    params = [("service", service)] if service is not None else []
    params += [("scope", s) for s in scopes]
    if extra:
        params += list(extra.items())
    # UTF-8 like docker (requests would send str credentials as latin-1)
    auth = (user.encode(), password.encode()) if user is not None else None
    return requests.get(token_url(berth), params=params, auth=auth, timeout=30, verify=verify)


def get_token(berth, scopes=(), user=None, password=None, service=SERVICE, verify=True):
    """A token from `GET /auth/token` (must succeed). Returns the token string."""
    r = get_token_response(berth, scopes, user, password, service, verify)
    assert r.status_code == 200, f"token request as {user!r} for {scopes}: {r.status_code} {r.text[:500]}"
    body = r.json()
    tok = body.get("token") or body.get("access_token")
    assert tok, body
    return tok


def post_token(berth, **form):
    return requests.post(token_url(berth), data=form, timeout=30)


def bearer(tok):
    return {"Authorization": f"Bearer {tok}"}


def claims(tok):
    """The payload of a JWT, unverified."""
    return jwt.decode(tok, options={"verify_signature": False})


def header(tok):
    return jwt.get_unverified_header(tok)


def access_of(tok):
    """{(type, name): set(actions)} from a token's `access` claim."""
    out = {}
    for a in claims(tok).get("access") or []:
        out.setdefault((a["type"], a["name"]), set()).update(a.get("actions") or [])
    return out


def jwks(berth, verify=True):
    r = requests.get(f"{berth.url}/auth/jwks.json", timeout=30, verify=verify)
    assert r.status_code == 200, (r.status_code, r.text[:300])
    return r.json()


def server_kid(berth):
    keys = jwks(berth)["keys"]
    assert keys, "empty JWK set"
    kid = keys[0].get("kid")
    assert kid, keys[0]
    return kid


def server_signing_key(berth):
    """The server's own PKCS#8 ES256 private key (PEM bytes)."""
    return (berth.data_dir / "auth" / "signing-key.pem").read_bytes()


def now():
    return int(time.time())


def make_claims(sub="admin", access=(), aud=SERVICE, iss=ISSUER, iat=None, nbf=None, exp=None):
    t = now()
    iat = t if iat is None else iat
    return {
        "iss": iss, "sub": sub, "aud": aud,
        "iat": iat, "nbf": iat if nbf is None else nbf, "exp": t + 300 if exp is None else exp,
        "jti": uuid.uuid4().hex,
        "access": [dict(type=t_, name=n, actions=list(a)) for (t_, n, a) in access],
    }


def sign(payload, key_pem, kid, alg="ES256"):
    return jwt.encode(payload, key_pem, algorithm=alg, headers={"kid": kid})


def new_ec_key_pem():
    k = ec.generate_private_key(ec.SECP256R1())
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def replace_payload(tok, payload):
    """The same header and signature with another payload (a tampered token)."""
    h, _p, s = tok.split(".")
    return ".".join([h, b64url(json.dumps(payload, separators=(",", ":")).encode()), s])


def unsigned_token(payload, kid=None):
    """An `alg: none` JWT."""
    hdr = {"alg": "none", "typ": "JWT"}
    if kid:
        hdr["kid"] = kid
    return b64url(json.dumps(hdr).encode()) + "." + b64url(json.dumps(payload).encode()) + "."


# ---------------------------------------------------------------- challenges

_PARAM = re.compile(r'\s*([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*(?:,|$)')


def parse_challenge(value):
    """`Bearer realm="..",service="..",scope=".."` -> ("bearer", {params})."""
    assert value, "no WWW-Authenticate header"
    scheme, _, rest = value.strip().partition(" ")
    params = {}
    pos = 0
    rest = rest.strip()
    while pos < len(rest):
        m = _PARAM.match(rest, pos)
        assert m, f"malformed WWW-Authenticate {value!r} at {rest[pos:]!r}"
        params[m.group(1).lower()] = m.group(2) if m.group(2) is not None else m.group(3)
        pos = m.end()
    return scheme.lower(), params


def assert_unauthorized(resp, berth=None, repo=None, action=None, error=None, realm=None, service=SERVICE,
                        scheme="http"):
    """401 UNAUTHORIZED, spec JSON, and a Bearer challenge naming realm, service and (for a repository
    request) the repository scope with the needed action. error="invalid_token" when a token was sent."""
    req = resp.request
    assert resp.status_code == 401, (
        f"{req.method} {req.url}: expected 401 UNAUTHORIZED, got {resp.status_code} {resp.text[:300]!r}")
    if req.method != "HEAD":
        assert "json" in resp.headers.get("Content-Type", ""), resp.headers
        body = resp.json()
        assert body["errors"] and body["errors"][0]["code"] == "UNAUTHORIZED", body
        assert isinstance(body["errors"][0].get("message"), str), body
    chal = resp.headers.get("WWW-Authenticate")
    assert chal, f"{req.method} {req.url}: 401 without WWW-Authenticate"
    sch, params = parse_challenge(chal)
    assert sch == "bearer", chal
    if realm is None and berth is not None:
        realm = f"{scheme}://{berth.addr}/auth/token"
    if realm is not None:
        assert params.get("realm") == realm, f"realm in {chal!r}, expected {realm!r}"
    assert params.get("service") == service, chal
    if repo is not None:
        scope = params.get("scope")
        assert scope, f"no scope in {chal!r}"
        parts = scope.split(":")
        assert len(parts) == 3 and parts[0] == "repository" and parts[1] == repo, (
            f"scope {scope!r} does not name repository {repo!r}")
        if action is not None:
            assert action in parts[2].split(","), f"scope {scope!r} lacks action {action!r}"
    if error is not None:
        assert params.get("error") == error, f"expected error={error!r} in {chal!r}"
    return params


def assert_denied(resp):
    req = resp.request
    assert resp.status_code == 403, (
        f"{req.method} {req.url}: expected 403 DENIED, got {resp.status_code} {resp.text[:300]!r}")
    if req.method != "HEAD":
        assert "json" in resp.headers.get("Content-Type", ""), resp.headers
        body = resp.json()
        assert body["errors"] and body["errors"][0]["code"] == "DENIED", body
        assert isinstance(body["errors"][0].get("message"), str), body


def assert_token_unauthorized(resp):
    """Bad credentials at /auth/token: 401 with the spec's UNAUTHORIZED JSON, and no token."""
    assert resp.status_code == 401, (resp.status_code, resp.text[:300])
    assert "json" in resp.headers.get("Content-Type", ""), resp.headers
    body = resp.json()
    assert body["errors"] and body["errors"][0]["code"] == "UNAUTHORIZED", body
    assert "token" not in body and "access_token" not in body, body


# ---------------------------------------------------------------- TLS material

def make_ca_and_server_cert(directory, ip="127.0.0.1", days=2):
    """Writes ca.crt, ca.key, server.crt (SAN IP:ip, DNS:localhost, signed by the CA) and server.key.
    Returns dict of paths."""
    directory.mkdir(parents=True, exist_ok=True)
    t0 = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    t1 = t0 + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"berth e2e CA {uuid.uuid4().hex[:8]}")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(t0).not_valid_after(t1)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(t0).not_valid_after(t1)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip)),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {
        "ca_crt": directory / "ca.crt", "ca_key": directory / "ca.key",
        "crt": directory / "server.crt", "key": directory / "server.key",
    }
    pem = serialization.Encoding.PEM
    paths["ca_crt"].write_bytes(ca_cert.public_bytes(pem))
    paths["ca_key"].write_bytes(ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    paths["crt"].write_bytes(cert.public_bytes(pem))
    paths["key"].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    paths["key"].chmod(0o600)
    return paths


class HttpsBerth:
    """Wraps a Berth started with [tls]: .url is https://."""

    def __init__(self, berth):
        self.b = berth

    def __getattr__(self, k):
        return getattr(self.b, k)

    @property
    def url(self):
        return f"https://{self.b.addr}"
