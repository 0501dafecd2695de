"""Provenance of generated images: generation parameters in a PNG text chunk, and a signed C2PA manifest.

The PNG `parameters` chunk is JSON (prompt, negative prompt, seed, steps, guidance, sampler, model,
version); it is plain metadata that anyone can strip or edit. The C2PA manifest (c2pa-python) is signed
with a certificate and key the user supplies; it declares the image AI-generated (IPTC digital source
type `trainedAlgorithmicMedia`) and hashes the file, so any later change to the pixels is detectable.
c2pa is imported only when signing or reading, so writing PNGs does not need it.
"""
from __future__ import annotations

import datetime as dt
import json
import mimetypes
import os
from pathlib import Path

from PIL import Image, PngImagePlugin

from .. import __version__
from ..common.files import atomic_path

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
AI_SOURCE_TYPES = {TRAINED_ALGORITHMIC_MEDIA,
                   "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"}
ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")


# --------------------------------------------------------------------------------------- PNG parameters


def png_parameters(params: dict | None) -> PngImagePlugin.PngInfo:
    """A PngInfo holding `params` as JSON in a `parameters` text chunk (empty when params is None: opt-out)."""
    info = PngImagePlugin.PngInfo()
    if params:
        # json.dumps escapes non-ASCII, so the chunk is always a plain tEXt chunk
        info.add_text("parameters", json.dumps(params))
    return info


def read_parameters(path: str | Path) -> dict | None:
    """The JSON `parameters` chunk of a PNG, or None when there is none (or it is another tool's free text)."""
    with Image.open(path) as im:
        text = getattr(im, "text", {}).get("parameters")  # .text also reads chunks after the pixels
    if not text:
        return None
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        return None
    return params if isinstance(params, dict) else None


# ------------------------------------------------------------------------------------------------- C2PA


def sign_c2pa(in_path: str | Path, out_path: str | Path, cert_chain_pem: str | bytes | Path,
              private_key_pem: str | bytes | Path, alg: str = "es256", title: str | None = None,
              params: dict | None = None, tsa_url: str | None = None) -> Path:
    """Write `out_path`: the image at `in_path` with a signed C2PA manifest declaring it AI-generated.

    The manifest holds one `c2pa.actions` assertion: `c2pa.created` with digitalSourceType
    trainedAlgorithmicMedia, softwareAgent limner <version> and, unless `params` is None, the generation
    parameters. `cert_chain_pem` (signing certificate first, then its issuers) and `private_key_pem` are PEM
    text/bytes or paths to PEM files. Offline unless `tsa_url` names an RFC 3161 timestamp authority.
    The output is written atomically (`common.files.atomic_path`); in_path may equal out_path.
    """
    import c2pa

    in_path, out_path = Path(in_path), Path(out_path)
    chain, key = _pem(cert_chain_pem, "certificate chain"), _pem(private_key_pem, "private key")
    alg = alg.lower()
    if alg not in ALGS:
        raise ValueError(f"unknown C2PA signing algorithm {alg!r}; choose one of {', '.join(ALGS)}")
    _check_credentials(chain, key)
    fmt = mimetypes.guess_type(in_path.name)[0]
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {in_path.name} from its extension")

    action = {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
              "softwareAgent": {"name": "limner", "version": __version__}}
    if params:
        action["parameters"] = params
    manifest = {"claim_generator_info": [{"name": "limner", "version": __version__}],
                "title": title or out_path.name, "format": fmt,
                "assertions": [{"label": "c2pa.actions", "data": {"actions": [action]}}]}
    # no thumbnail: our images are thumbnail-sized already, and it would double the file
    settings = {"builder": {"thumbnail": {"enabled": False}}}
    try:
        with atomic_path(out_path) as tmp, c2pa.Context.from_dict(settings) as context, \
                c2pa.Builder(manifest, context=context) as builder, \
                c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, chain, key, tsa_url)) as signer, \
                open(in_path, "rb") as src, open(tmp, "w+b") as dst:
            builder.sign(signer, fmt, src, dst)
    except c2pa.C2paError as e:
        raise ValueError(f"C2PA signing of {in_path} failed: {e}") from e
    return out_path


def read_c2pa(path: str | Path, trust_anchors: str | bytes | Path | None = None) -> dict | None:
    """The C2PA manifest store of an image with a summary, or None when the image carries no manifest.

    Returns {"ai_generated", "validation", "failures", "parameters", "signer", "manifest_store"}:
    `validation` is c2pa's state: "Trusted" (valid and chained to a trust anchor), "Valid" (intact and
    correctly signed but the signer is not on a trust list: `failures` then lists
    signingCredential.untrusted) or "Invalid" (e.g. assertion.dataHash.mismatch: the file changed after
    signing). `ai_generated` is what the active manifest declares; believe it only when valid.
    `trust_anchors` (PEM text or path) adds root certificates to trust, e.g. your own CA.
    """
    import c2pa

    settings = {"verify": {"remote_manifest_fetch": False}}  # never go online to read a file
    if trust_anchors is not None:
        settings["trust"] = {"user_anchors": _pem(trust_anchors, "trust anchors").decode()}
    reader = c2pa.Reader.try_create(str(path), context=c2pa.Context.from_dict(settings))
    if reader is None:
        return None
    with reader:
        store = json.loads(reader.json())
    manifest = store.get("manifests", {}).get(store.get("active_manifest"), {})
    actions = [a for assertion in manifest.get("assertions", [])
               if assertion.get("label", "").startswith("c2pa.actions")
               for a in assertion.get("data", {}).get("actions", [])]
    created = next((a for a in actions if a.get("action") == "c2pa.created"), {})
    results = store.get("validation_results", {}).get("activeManifest", {})
    return {"ai_generated": created.get("digitalSourceType") in AI_SOURCE_TYPES,
            "validation": store.get("validation_state"),
            "failures": [f["code"] for f in results.get("failure", [])],
            "parameters": created.get("parameters"),
            "signer": manifest.get("signature_info", {}).get("common_name"),
            "manifest_store": store}


def _pem(value: str | bytes | Path, what: str) -> bytes:
    """PEM bytes from PEM text/bytes or from a path to a PEM file."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"C2PA {what} not found: {path}")
    return path.read_bytes()


def _check_credentials(chain: bytes, key: bytes) -> None:
    """Fail early, and clearly, on the mistakes c2pa reports cryptically: unreadable PEM, mismatched key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError as e:
        raise ValueError(f"the C2PA certificate chain is not PEM certificates: {e}") from e
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(f"the C2PA private key is not an unencrypted PEM private key: {e}") from e
    problems = _profile_problems(certs[0])
    if problems:
        raise ValueError("the C2PA signing certificate (the first in the chain) does not meet the C2PA certificate "
                         f"profile: {'; '.join(problems)}. make_test_certificate() shows one that does")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(serialization.Encoding.DER, pub) != \
            certs[0].public_key().public_bytes(serialization.Encoding.DER, pub):
        raise ValueError("the C2PA private key does not match the signing certificate (the first in the chain)")


def _profile_problems(cert) -> list[str]:
    """What c2pa would reject in a signing certificate, in words (the C2PA spec's certificate profile)."""
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    def ext(cls):
        try:
            return cert.extensions.get_extension_for_class(cls).value
        except x509.ExtensionNotFound:
            return None

    problems = []
    now = dt.datetime.now(dt.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(f"it is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                        f"{cert.not_valid_after_utc:%Y-%m-%d})")
    if cert.issuer == cert.subject:
        problems.append("it is self-signed; it must be issued by a CA whose certificate follows it in the chain")
    if (bc := ext(x509.BasicConstraints)) is not None and bc.ca:
        problems.append("it is a CA certificate")
    if (ku := ext(x509.KeyUsage)) is None or not ku.digital_signature:
        problems.append("it lacks the digitalSignature key usage")
    eku = ext(x509.ExtendedKeyUsage)
    if eku is None or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku:
        problems.append("it needs a specific extended key usage such as emailProtection or documentSigning")
    return problems


def make_test_certificate(directory: str | Path) -> tuple[Path, Path]:
    """A throwaway ES256 (P-256) CA and signing certificate that C2PA accepts: FOR TESTS ONLY.

    Writes `test-chain.pem` (signing certificate, then the CA), `test-key.pem` (the signing key, PKCS#8)
    and `test-ca.pem` (the CA alone, to pass to read_c2pa(trust_anchors=...)); returns (chain, key).
    C2PA rejects self-signed signing certificates, hence the two-level chain; the signing certificate
    carries what the C2PA certificate profile requires: v3, not a CA, digitalSignature key usage
    (critical), and the emailProtection extended key usage.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "limner test (not for production)"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(signing: bool):
        return x509.KeyUsage(digital_signature=signing, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=not signing,
                             crl_sign=not signing, encipher_only=False, decipher_only=False)

    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("limner test CA")).issuer_name(name("limner test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(signing=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(name("limner test signer")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(signing=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    chain_path, key_path, ca_path = directory / "test-chain.pem", directory / "test-key.pem", directory / "test-ca.pem"
    chain_path.write_bytes(cert.public_bytes(pem) + ca.public_bytes(pem))
    ca_path.write_bytes(ca.public_bytes(pem))
    key_path.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return chain_path, key_path
