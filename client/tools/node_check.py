"""``fedemo node check``: can this hospital's node reach the coordinator with its CA and key? Joins nothing.

Takes a deployed ``flower-supernode``'s flags and checks in order, each answered in plain words: the address
resolves, TCP connects, TLS verifies against the CA (else says what the certificate holds), a Flower
SuperLink answers the Fleet API, the node key loads and matches ``auth.pub``, and (``--registered``) the key
is registered at the SuperLink or in a local list. Standard-library network code; only the registration
step loads Flower's Control API client. The steps in detail: docs/design_notes.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ASK_SUPERLINK = "superlink"  # --registered without a file: ask the SuperLink's Control API
FLEET_PROBE_PATH = "/v1/fleet/get-run"  # Flower 1.41's Fleet HTTP API (flwr/supernode/fleet_http_client.py)
NOT_REGISTERED = "code: 2004 Failed to activate SuperNode"  # what flower-supernode prints for an unknown key


@dataclass
class Step:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass
class NodeCheck:
    superlink: str
    steps: list[Step]

    @property
    def ready(self) -> bool:
        return all(step.ok for step in self.steps)

    def to_json(self) -> dict:
        return {"superlink": self.superlink, "ready": self.ready, "steps": [asdict(s) for s in self.steps]}


def check_node(superlink: str, root_certificates: Path, private_key: Path | None = None,
               registered: Path | str | None = None, timeout: float = 10.0) -> NodeCheck:
    """Every step above; network steps stop at the first failure, the key steps run regardless.

    ``registered``: ``ASK_SUPERLINK`` asks the SuperLink's Control API, a path compares with that local list.
    """
    steps: list[Step] = []
    check = NodeCheck(superlink, steps)
    _network_steps(steps, superlink, Path(root_certificates), timeout)
    reached = all(step.ok for step in steps)  # the SuperLink answered over TLS: it can be asked
    if private_key is not None:
        local = None if registered in (None, ASK_SUPERLINK) else Path(registered)
        key = key_steps(Path(private_key), local)
        steps.extend(key)
        if registered == ASK_SUPERLINK and key[0].ok and reached:  # look the loaded key up at the SuperLink
            steps.append(superlink_registration_step(superlink, Path(root_certificates), Path(private_key),
                                                     timeout))
    elif registered is not None:
        steps.append(Step("node key", False, "--registered needs --auth-supernode-private-key to compare against",
                          "give the key the node starts with"))
    return check


# ------------------------------------------------------------------------------------------------- network


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``1.2.3.4:port`` or ``[::1]:port`` (what ``--superlink`` takes); ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT (for example coordinator.example.org:8000)")
    return host.strip("[]"), int(port)


def _network_steps(steps: list[Step], superlink: str, ca_file: Path, timeout: float) -> None:
    try:
        host, port = parse_address(superlink)
    except ValueError as err:
        steps.append(Step("address", False, str(err), "give --superlink exactly as the SuperNode will"))
        return
    context = _tls_context(steps, ca_file)
    if context is None:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        steps.append(Step("address", False, f"the host name {host!r} does not resolve ({err.strerror})",
                          "check the spelling, or this machine's DNS / hosts file"))
        return
    addresses = sorted({info[4][0] for info in infos})
    steps.append(Step("address", True, f"{host} resolves to {', '.join(addresses)}"))

    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        steps.append(Step("TCP", False, f"connection refused at {host}:{port}: the host answered, but nothing "
                          "listens on that port", "is flower-superlink running, and is its --port this one?"))
        return
    except (TimeoutError, socket.timeout):
        steps.append(Step("TCP", False, f"no answer from {host}:{port} within {timeout:g} s",
                          "a firewall drops the packets (allow outbound TCP to this port), or the host is down"))
        return
    except OSError as err:
        steps.append(Step("TCP", False, f"cannot reach {host}:{port}: {err.strerror or err}",
                          "check this machine's network route to the coordinator"))
        return
    steps.append(Step("TCP", True, f"connected to {host}:{port} in {1000 * (time.monotonic() - started):.0f} ms"))

    with sock:
        sock.settimeout(timeout)
        try:
            tls = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLCertVerificationError as err:
            steps.append(_verify_failure(err, host, port, ca_file, timeout))
            return
        except (TimeoutError, socket.timeout):
            steps.append(Step("TLS", False, f"{host}:{port} accepted the connection but did not complete a TLS "
                              f"handshake within {timeout:g} s", "is this the SuperLink's port?"))
            return
        except ssl.SSLEOFError:
            steps.append(Step("TLS", False, f"{host}:{port} closed the connection during the TLS handshake",
                              "is this the SuperLink's port? (a firewall or proxy in between may also cut it)"))
            return
        except ssl.SSLError as err:
            steps.append(Step("TLS", False, f"{host}:{port} does not speak TLS ({err.reason or err})",
                              "a SuperLink started with --insecure, or another service on this port"))
            return
        except OSError as err:
            steps.append(Step("TLS", False, f"{host}:{port} closed the connection during the TLS handshake "
                              f"({err.strerror or err})", "is this the SuperLink's port?"))
            return
        with tls:
            cert = _certificate_summary(tls.getpeercert(binary_form=True))
            steps.append(Step("TLS", True, f"the SuperLink's certificate is signed by {ca_file} and names {host} "
                              f"(it names {cert['names']}; valid until {cert['not_after']})"))
            steps.append(_fleet_probe(tls, host, port))


def _tls_context(steps: list[Step], ca_file: Path) -> ssl.SSLContext | None:
    """Trust exactly the federation CA, as ``--root-certificates`` makes the SuperNode do."""
    if not ca_file.is_file():
        steps.append(Step("CA certificate", False, f"{ca_file} does not exist",
                          "give the ca.crt from your hospital's credentials folder"))
        return None
    try:
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (ssl.SSLError, ValueError) as err:
        steps.append(Step("CA certificate", False, f"{ca_file} is not a PEM certificate ({err})",
                          "give the ca.crt from your hospital's credentials folder"))
        return None


def _verify_failure(err: ssl.SSLCertVerificationError, host: str, port: int, ca_file: Path,
                    timeout: float) -> Step:
    """What exactly did not verify, with what the certificate holds (fetched once more, unverified)."""
    try:
        cert = _certificate_summary(_fetch_unverified(host, port, timeout))
    except (OSError, ValueError):
        cert = {"names": "?", "issuer": "?", "not_after": "?", "not_before": "?"}
    code = getattr(err, "verify_code", None)
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        return Step("TLS", False, f"hostname mismatch: the SuperLink's certificate names {cert['names']}, "
                    f"not {host}", "dial one of those names, or have the coordinator add this one "
                    "(fedemo credentials init --superlink-host / --superlink-ip)")
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return Step("TLS", False, f"the SuperLink's certificate expired on {cert['not_after']}",
                    "the coordinator issues a new one (docs/deployment.md, security notes)")
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return Step("TLS", False, f"the SuperLink's certificate is valid only from {cert['not_before']}",
                    "check this machine's clock")
    if code in (2, 18, 19, 20, 21):  # unknown issuer, self-signed, not signed by anything in ca_file
        return Step("TLS", False, f"certificate verify failed: the SuperLink's certificate (issued by "
                    f"{cert['issuer']}) is not signed by the CA in {ca_file}",
                    "use the ca.crt of this federation (compare its fingerprint with federation.json's ca_fingerprint)")
    return Step("TLS", False, f"certificate verify failed: {err.verify_message or err}",
                f"check {ca_file} and the address")


def _fetch_unverified(host: str, port: int, timeout: float) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as sock:
        with context.wrap_socket(sock, server_hostname=host) as tls:
            return tls.getpeercert(binary_form=True)


def _certificate_summary(der: bytes | None) -> dict[str, str]:
    from cryptography import x509

    if not der:
        raise ValueError("no certificate")
    cert = x509.load_der_x509_certificate(der)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in sans.get_values_for_type(x509.DNSName)] + [
            str(n) for n in sans.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {"names": ", ".join(names) or "no names at all", "issuer": cert.issuer.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%d"),
            "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")}


def _fleet_probe(tls: ssl.SSLSocket, host: str, port: int) -> Step:
    """One unsigned, empty ``get-run`` request: it reads nothing and registers or activates no node."""
    request = (f"POST {FLEET_PROBE_PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/protobuf\r\n"
               "Content-Length: 0\r\nConnection: close\r\n\r\n").encode()
    try:
        tls.sendall(request)
        status_line = tls.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
    except (OSError, ssl.SSLError) as err:
        return Step("Fleet API", False, f"TLS works, but the HTTP request failed ({err})",
                    "is this a Flower 1.41 SuperLink?")
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return Step("Fleet API", False, f"TLS works, but no HTTP answer ({status_line or 'nothing'!r})",
                    "is this a Flower 1.41 SuperLink?")
    status = int(parts[1])
    if status == 401:
        return Step("Fleet API", True, "a SuperLink answered; it requires SuperNode authentication (an unsigned "
                    "request gets HTTP 401), so this node needs its key, registered by the coordinator")
    if status == 404:
        return Step("Fleet API", False, f"HTTP 404 for {FLEET_PROBE_PATH}: this server is not a Flower 1.41 "
                    "SuperLink's Fleet API", "check the address and port with the coordinator")
    return Step("Fleet API", True, f"a SuperLink answered (HTTP {status}); it does not ask for node signatures "
                "(no --enable-supernode-auth), so any node with the CA certificate could join")


# ------------------------------------------------------------------------------------------------- the key


def key_steps(private_key: Path, registered: Path | None) -> list[Step]:
    """The key loads as flower-supernode loads it; its public half matches auth.pub and the coordinator's list."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_ssh_private_key(private_key.read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"a {type(key).__name__.replace('PrivateKey', '')} key, not an EC key")
    except FileNotFoundError:
        return [Step("node key", False, f"{private_key} does not exist", "give the auth.key the node starts with")]
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as err:
        return [Step("node key", False, f"{private_key} cannot be read as an OpenSSH EC private key ({err}); "
                     "flower-supernode would exit with 'Unable to parse the private key file'",
                     "use the auth.key from `fedemo credentials init`, or ssh-keygen -t ecdsa -b 384")]
    public_line = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                serialization.PublicFormat.OpenSSH).decode()
    fingerprint = key_fingerprint(public_line)
    mode = private_key.stat().st_mode & 0o777
    loose = f"; warning: it is readable by others (mode {mode:o}), chmod 600 it" if mode & 0o077 else ""
    steps = [Step("node key", True, f"{private_key} loads (EC {key.curve.name}), public key fingerprint "
                  f"{fingerprint}{loose}")]
    beside = private_key.with_name("auth.pub") if private_key.name == "auth.key" else None
    if beside is not None and beside.is_file():
        matches = _blob(beside.read_text()) == _blob(public_line)
        steps.append(Step("auth.pub", matches, f"{beside} {'is' if matches else 'is NOT'} this key's public half",
                          "" if matches else "the coordinator registered a different key than this node holds"))
    if registered is not None:
        steps.append(_registration_step(public_line, fingerprint, registered))
    return steps


def key_fingerprint(public_line: str) -> str:
    """As ``ssh-keygen -l -f auth.pub`` prints it (and federation.json lists it)."""
    digest = hashlib.sha256(base64.b64decode(_blob(public_line))).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def _blob(public_line: str) -> str:
    parts = public_line.split()
    return parts[1] if len(parts) >= 2 else ""


def registered_keys(path: Path) -> dict[str, str]:
    """Key blob -> name: from federation.json's hospitals, or from lines of OpenSSH public keys (auth.pub)."""
    text = path.read_text(encoding="utf-8")
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError:
        manifest = None
    if isinstance(manifest, dict):
        return {_blob(h["public_key"]): h["name"] for h in manifest.get("hospitals", [])}
    keys = {}
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            parts = line.split()
            keys[_blob(line)] = parts[2] if len(parts) > 2 else f"line {number}"
    return keys


def _registration_step(public_line: str, fingerprint: str, registered: Path) -> Step:
    try:
        keys = registered_keys(registered)
    except (OSError, KeyError, TypeError) as err:
        return Step("registration", False, f"cannot read the coordinator's list {registered} ({err})",
                    "give federation.json or a file of auth.pub lines")
    name = keys.get(_blob(public_line))
    local = ("only the local list was checked, not the SuperLink; `--registered` without a file asks the "
             "SuperLink itself")
    if name is not None:
        return Step("registration (local list)", True, f"this key is in {registered} as {name!r}; {local}")
    return Step("registration (local list)", False, f"this key ({fingerprint}) is not in {registered}: the "
                f"SuperLink would refuse the node ('{NOT_REGISTERED}') if it was registered from that list; {local}",
                "send this node's auth.pub to the coordinator, who registers it with `flwr supernode register`")


def superlink_registration_step(superlink: str, ca_file: Path, private_key: Path, timeout: float) -> Step:
    """Ask the SuperLink's Control API which keys are registered (``ListNodes``, as ``flwr supernode list``)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private_key.read_bytes(), None)
    mine = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    fingerprint = key_fingerprint(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                serialization.PublicFormat.OpenSSH).decode())
    try:
        nodes = list_registered_nodes(superlink, ca_file, timeout)
    except Exception as err:  # noqa: BLE001 - any failure of the listing is reported, in words, as unchecked
        return Step("registration (SuperLink)", False, f"the SuperLink's Control API did not list its nodes "
                    f"({type(err).__name__}: {str(err)[:200]}): registration NOT checked",
                    "ask the coordinator to run `flwr supernode list`, or compare with their list: "
                    "--registered federation.json")
    for node in nodes:
        if node["public_key_der"] == mine and node["status"] != "unregistered":
            return Step("registration (SuperLink)", True, f"the SuperLink lists this key as node {node['node_id']} "
                        f"({node['name'] or 'no name'}), status {node['status']} (asked the SuperLink's Control "
                        "API, as `flwr supernode list`; nothing activated)")
    return Step("registration (SuperLink)", False, f"the SuperLink does not list this key ({fingerprint}) among "
                f"its {len(nodes)} registered nodes: it would refuse the node ('{NOT_REGISTERED}')",
                "send this node's auth.pub to the coordinator, who registers it with `flwr supernode register`")


def list_registered_nodes(superlink: str, ca_file: Path, timeout: float) -> list[dict]:
    """Every node the SuperLink's Control API lists: id, name, status and public key (DER), over TLS with the CA."""
    from cryptography.hazmat.primitives import serialization

    from client.tools.flower_control_seam import list_nodes

    nodes = []
    for info in list_nodes(superlink, ca_file.read_bytes()):
        try:
            der = serialization.load_pem_public_key(info.public_key).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        except ValueError:
            der = b""
        nodes.append({"node_id": info.node_id, "name": info.name or info.owner_name, "status": info.status,
                      "public_key_der": der})
    return nodes


def describe(check: NodeCheck) -> str:
    lines = [f"Node check against the SuperLink at {check.superlink} (nothing joined, nothing sent but one "
             "unsigned probe):"]
    for step in check.steps:
        lines.append(f"  {'ok' if step.ok else 'FAILED':6}  {step.name}: {step.detail}")
        if step.fix:
            lines.append(f"          fix: {step.fix}")
    failed = sum(not s.ok for s in check.steps)
    lines.append("Ready: this node can reach the coordinator with its certificate and key." if check.ready
                 else f"Not ready: {failed} problem{'s' if failed > 1 else ''} above.")
    return "\n".join(lines)
