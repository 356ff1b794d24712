"""Everything a deployed federation needs to trust itself: a CA, the SuperLink's TLS certificate, node keys.

Writes the files for Flower's two mechanisms: TLS (a federation CA signs the SuperLink's certificate, whose
SANs list every name it is reached by) and SuperNode authentication (one P-384 key pair per hospital, the
private key in OpenSSH format, the public line registered with ``flwr supernode register``). Private keys
are 0600 in 0700 folders; nothing is ever overwritten. Folder layout: docs/deployment.md, docs/design_notes.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared_models.atomic_files import atomic_create_bytes, atomic_write_text

MANIFEST = "federation.json"
CA_DIR, SUPERLINK_DIR, HOSPITALS_DIR = "ca", "superlink", "hospitals"
CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
NODE_KEY, NODE_PUB = "auth.key", "auth.pub"
NODE_CURVE = ec.SECP384R1()  # `flwr supernode register` accepts any NIST curve; Flower's docs use P-384
TLS_CURVE = ec.SECP384R1()
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CredentialsError(ValueError):
    """A credentials folder or argument is wrong; the message names the file or value."""


@dataclass
class Hospital:
    name: str
    public_key: str  # the OpenSSH line that `flwr supernode register` takes
    fingerprint: str  # as `ssh-keygen -l` prints it, to compare out of band


@dataclass
class Federation:
    superlink_hosts: list[str]
    superlink_ips: list[str]
    ca_fingerprint: str  # SHA-256 of the CA certificate (DER), as `openssl x509 -fingerprint -sha256` prints it
    server_not_after: str
    hospitals: list[Hospital] = field(default_factory=list)

    def hospital(self, name: str) -> Hospital | None:
        return next((h for h in self.hospitals if h.name == name), None)


# ---------------------------------------------------------------- file writing


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode``; an existing file is an error, never overwritten."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_create_bytes(path, data, mode=mode)
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it (move it away first)") from None


def _private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_fingerprint(cert: x509.Certificate) -> str:
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def _key_fingerprint(public_line: str) -> str:
    """The fingerprint `ssh-keygen -l -f auth.pub` prints, to compare keys over the phone."""
    blob = base64.b64decode(public_line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ---------------------------------------------------------------- certificates


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedEmo federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(TLS_CURVE)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("FedEmo federation CA")).issuer_name(_name("FedEmo federation CA"))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str],
                     ips: list[str], days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The SuperLink's TLS certificate: every host name and IP it is reached by is a SAN."""
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    key = ec.generate_private_key(TLS_CURVE)
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name((hosts or ips)[0])).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_node_keys() -> tuple[bytes, str]:
    """A SuperNode auth key pair: (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(NODE_CURVE)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


# ---------------------------------------------------------------- the folder


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise CredentialsError(f"hospital name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    return name


def _check_addresses(hosts: list[str], ips: list[str]) -> None:
    if not hosts and not ips:
        raise CredentialsError("name at least one --superlink-host or --superlink-ip (the addresses nodes dial)")
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise CredentialsError(f"--superlink-ip {ip!r} is not an IP address") from None


def load_federation(out_dir: Path) -> Federation:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a credentials folder (create one with `fedemo credentials init`)")
    try:
        raw = json.loads(path.read_text())
        raw["hospitals"] = [Hospital(**h) for h in raw.get("hospitals", [])]
        return Federation(**raw)
    except (ValueError, TypeError) as err:
        raise CredentialsError(f"{path}: not a valid federation manifest ({err})") from None


def _save_manifest(out_dir: Path, federation: Federation) -> None:
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(asdict(federation), indent=2, allow_nan=False) + "\n")


def init_federation(out_dir: Path, hosts: list[str], ips: list[str], hospitals: list[str],
                    ca_days: int = 3650, server_days: int = 365) -> Federation:
    """Create the CA, the SuperLink certificate and a key pair per hospital in a new folder."""
    out_dir = Path(out_dir)
    _check_addresses(hosts, ips)
    for name in hospitals:
        _check_name(name)
    if len(set(hospitals)) != len(hospitals):
        raise CredentialsError(f"hospital names repeat: {', '.join(hospitals)}")
    if (out_dir / MANIFEST).exists() or (out_dir / CA_DIR / CA_KEY).exists():
        raise FileExistsError(f"{out_dir} already holds federation credentials; add a hospital with "
                              f"`fedemo credentials add-hospital {out_dir} NAME`, or choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)

    ca_key, ca_cert = make_ca(ca_days)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    _write_new(_private_dir(out_dir / CA_DIR) / CA_KEY, _pem_key(ca_key), 0o600)
    _write_new(out_dir / CA_DIR / CA_CERT, ca_pem, 0o644)

    server_key, server_cert = make_server_cert(ca_key, ca_cert, hosts, ips, server_days)
    superlink = _private_dir(out_dir / SUPERLINK_DIR)
    _write_new(superlink / SERVER_KEY, _pem_key(server_key), 0o600)
    _write_new(superlink / SERVER_CERT, server_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new(superlink / CA_CERT, ca_pem, 0o644)

    federation = Federation(superlink_hosts=list(hosts), superlink_ips=list(ips),
                            ca_fingerprint=_cert_fingerprint(ca_cert),
                            server_not_after=server_cert.not_valid_after_utc.isoformat())
    _save_manifest(out_dir, federation)
    for name in hospitals:
        add_hospital(out_dir, name)
    return load_federation(out_dir)


def add_hospital(out_dir: Path, name: str) -> Hospital:
    """A key pair for one more hospital (the CA key is not needed: node keys are not certificates)."""
    out_dir = Path(out_dir)
    _check_name(name)
    federation = load_federation(out_dir)
    folder = out_dir / HOSPITALS_DIR / name
    if federation.hospital(name) is not None or folder.exists():
        raise FileExistsError(f"{folder}: hospital {name!r} already has credentials; refusing to replace its key")
    private, public = make_node_keys()
    _private_dir(folder)
    _write_new(folder / NODE_KEY, private, 0o600)
    _write_new(folder / NODE_PUB, (public + f" fedemo-{name}\n").encode(), 0o644)
    _write_new(folder / CA_CERT, (out_dir / CA_DIR / CA_CERT).read_bytes(), 0o644)
    hospital = Hospital(name=name, public_key=public, fingerprint=_key_fingerprint(public))
    federation.hospitals.append(hospital)
    _save_manifest(out_dir, federation)
    return hospital


def describe(out_dir: Path, federation: Federation) -> str:
    """What was written and what to do with it, in plain words."""
    out_dir = Path(out_dir).resolve()
    lines = [
        f"Federation credentials in {out_dir}",
        f"  CA certificate   {out_dir / CA_DIR / CA_CERT}  (SHA-256 {federation.ca_fingerprint})",
        f"  CA private key   {out_dir / CA_DIR / CA_KEY}  (keep offline; only needed for a new SuperLink certificate)",
        f"  SuperLink        {out_dir / SUPERLINK_DIR}/{{{SERVER_CERT},{SERVER_KEY},{CA_CERT}}}  "
        f"valid for {', '.join(federation.superlink_hosts + federation.superlink_ips)} until "
        f"{federation.server_not_after[:10]}",
    ]
    for h in federation.hospitals:
        lines.append(f"  hospital {h.name:<12} {out_dir / HOSPITALS_DIR / h.name}/{{{NODE_KEY},{NODE_PUB},{CA_CERT}}}"
                     f"  key {h.fingerprint}")
    lines.append("Give each hospital its own folder (it holds that hospital's private key); register its public key "
                 "on the coordinator with `flwr supernode register .../auth.pub <connection>`.")
    return "\n".join(lines)
