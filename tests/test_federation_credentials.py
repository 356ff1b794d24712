"""`fedemo credentials`: a CA, the SuperLink's TLS certificate with SANs, hospital keys Flower accepts."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from server.tools import federation_credentials as fc
from simulations.cli import main


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_ca_superlink_certificate_and_hospital_keys(tmp_path, capsys):
    out = tmp_path / "creds"
    assert main(["credentials", "init", str(out), "--superlink-host", "localhost", "--superlink-host",
                 "coordinator.example.org", "--superlink-ip", "127.0.0.1", "--hospital", "a", "--hospital", "b"]) == 0
    assert "hospital b" in capsys.readouterr().out

    ca = x509.load_pem_x509_certificate((out / "ca" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "superlink" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "coordinator.example.org"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    for key in (out / "ca" / "ca.key", out / "superlink" / "server.key", out / "hospitals" / "a" / "auth.key"):
        assert _mode(key) == 0o600, key
    assert _mode(out / "hospitals" / "a") == 0o700

    # The hospital keys in the formats Flower itself parses: flower-supernode's private-key loader
    # (OpenSSH EC) and `flwr supernode register`'s public-key loader (NIST curve).
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    for name in ("a", "b"):
        private = load_ssh_private_key((out / "hospitals" / name / "auth.key").read_bytes(), None)
        assert try_load_public_key(out / "hospitals" / name / "auth.pub") == public_key_to_bytes(private.public_key())
    federation = fc.load_federation(out)
    assert [h.name for h in federation.hospitals] == ["a", "b"]
    assert federation.hospitals[0].fingerprint.startswith("SHA256:")


def test_nothing_is_overwritten(tmp_path, capsys):
    out = tmp_path / "creds"
    fc.init_federation(out, ["localhost"], [], ["a"])
    key_before = (out / "hospitals" / "a" / "auth.key").read_bytes()
    ca_before = (out / "ca" / "ca.key").read_bytes()

    assert main(["credentials", "init", str(out), "--superlink-host", "localhost"]) == 2
    assert "already holds federation credentials" in capsys.readouterr().err
    assert main(["credentials", "add-hospital", str(out), "a"]) == 2
    assert "refusing to replace its key" in capsys.readouterr().err
    assert (out / "hospitals" / "a" / "auth.key").read_bytes() == key_before
    assert (out / "ca" / "ca.key").read_bytes() == ca_before

    assert main(["credentials", "add-hospital", str(out), "c"]) == 0
    assert [h.name for h in fc.load_federation(out).hospitals] == ["a", "c"]
    with pytest.raises(FileExistsError, match="auth.key"):
        fc._write_new(out / "hospitals" / "c" / "auth.key", b"x", 0o600)


@pytest.mark.parametrize("argv, message", [
    (["--hospital", "a"], "at least one --superlink-host or --superlink-ip"),
    (["--superlink-ip", "not-an-ip"], "is not an IP address"),
    (["--superlink-host", "h", "--hospital", "../evil"], "hospital name"),
    (["--superlink-host", "h", "--hospital", "a", "--hospital", "a"], "repeat"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["credentials", "init", str(tmp_path / "creds"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "creds" / "ca").exists()


def test_tls_handshake_with_the_federation_ca(tmp_path):
    """A client trusting only the federation CA accepts the SuperLink certificate for each SAN."""
    out = tmp_path / "creds"
    fc.init_federation(out, ["localhost"], ["127.0.0.1"], [])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(out / "superlink" / "server.crt", out / "superlink" / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(n):
        for _ in range(n):
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, args=(3,), daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(out / "ca" / "ca.crt"))
    for name in ("localhost", "127.0.0.1"):
        with socket.create_connection(("127.0.0.1", port)) as sock, \
                client_ctx.wrap_socket(sock, server_hostname=name) as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):  # not a SAN: refused
        with socket.create_connection(("127.0.0.1", port)) as sock:
            client_ctx.wrap_socket(sock, server_hostname="elsewhere.example.org")
    thread.join(timeout=5)
    listener.close()
