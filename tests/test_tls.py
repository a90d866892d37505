"""TLS between bucketlyd and its clients, with a throwaway CA made by the openssl command line."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import bucketly
from bucketly.errors import BucketlyConnectionError
from bucketly.testing import RunningServer, bucketlyd_command, run_server

from .conftest import TEST_HANDLERS, AsyncProxy

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


class ThrowawayCA:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, valid for a day."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = directory / "ca.pem"
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=bucketly throwaway test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )
        self.server_cert, self.server_key = self._issue(
            "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            "extendedKeyUsage=serverAuth\n"
        )
        self.client_cert, self.client_key = self._issue(
            "client", "producer-1", "extendedKeyUsage=clientAuth\n"
        )

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.dir, check=True, capture_output=True,
                       timeout=60)

    def _issue(self, name: str, common_name: str, extensions: str) -> tuple[Path, Path]:
        (self.dir / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n" + extensions
        )
        self._openssl(
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}",
        )
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext",
        )
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"

    def client_context(self, *, with_certificate: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if with_certificate:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return ThrowawayCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def tls_server(ca: ThrowawayCA, tmp_path: Path) -> Iterator[RunningServer]:
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
        extra_args=["--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key)],
    ) as server:
        yield server


def _client(kind: str, server: RunningServer, **kwargs: Any) -> Any:
    factory: Any = bucketly.Client if kind == "sync" else AsyncProxy
    return factory(server.host, server.port, **kwargs)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_clients_speak_tls_with_a_verified_server(
    kind: str, ca: ThrowawayCA, tls_server: RunningServer
) -> None:
    tls_server.wait_for_log("TLS on")
    client = _client(kind, tls_server, user="admin", password="admin", tls=ca.client_context())
    try:
        client.create_bucket("b", "Recorder")
        client.send_many("b", list(range(3000)))
        client.flush()
        assert client.view("b", "count") == 3000
        assert len(client.dump("b")["events"]) == 3000
    finally:
        client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_clients_refuse_a_server_they_cannot_verify(
    kind: str, tls_server: RunningServer
) -> None:
    # tls=True trusts the system's CAs only, which never signed our throwaway CA.
    with pytest.raises(BucketlyConnectionError, match=r"(?i)certificate"):
        _client(kind, tls_server, user="admin", password="admin", tls=True, timeout=10)


def test_a_plain_client_gets_nothing_from_a_tls_server(tls_server: RunningServer) -> None:
    with pytest.raises(BucketlyConnectionError):
        bucketly.Client(tls_server.host, tls_server.port, user="admin", password="admin",
                        timeout=1)


def test_client_certificates_are_required_with_tls_client_ca(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
        extra_args=["--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key),
                    "--tls-client-ca", str(ca.ca)],
    ) as server:
        server.wait_for_log(r"TLS on \(client certificates required\)")
        with pytest.raises(BucketlyConnectionError):
            client = bucketly.Client(server.host, server.port, user="admin", password="admin",
                                     tls=ca.client_context(), timeout=5)
            client.ping()  # with TLS 1.3 the refusal may only show on the first read
        with bucketly.Client(
            server.host, server.port, user="admin", password="admin",
            tls=ca.client_context(with_certificate=True),
        ) as client:
            assert client.ping() == "pong"


def test_the_cli_speaks_tls(ca: ThrowawayCA, tls_server: RunningServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUCKETLY")}
    env.update(BUCKETLY_HOST=tls_server.host, BUCKETLY_PORT=str(tls_server.port),
               BUCKETLY_USER="admin", BUCKETLY_PASSWORD="admin")
    result = subprocess.run(
        [sys.executable, "-m", "bucketly.cli", "--tls", "--tls-ca", str(ca.ca), "ping"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_unusable_tls_files_stop_the_start(ca: ThrowawayCA, tmp_path: Path) -> None:
    for extra in (
        ["--tls-cert", str(tmp_path / "missing.pem")],
        ["--tls-cert", str(ca.server_cert), "--tls-key", str(ca.client_key)],  # not its key
        ["--tls-key", str(ca.server_key)],
        ["--tls-cert", str(ca.server_cert), "--tls-key", str(ca.server_key),
         "--tls-client-ca", str(tmp_path / "missing-ca.pem")],
    ):
        command = bucketlyd_command(tmp_path / "db.dat", TEST_HANDLERS, 0, extra)
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (extra, result.stderr)
        assert "tls" in result.stderr.lower() or "certificate" in result.stderr.lower()


def test_no_clear_text_warning_with_tls_on_every_interface(
    ca: ThrowawayCA, tmp_path: Path
) -> None:
    with run_server(
        handlers=TEST_HANDLERS, database=tmp_path / "db.dat",
        extra_args=["--hostname", "0.0.0.0", "--tls-cert", str(ca.server_cert),
                    "--tls-key", str(ca.server_key)],
    ) as server:
        server.wait_for_log("TLS on")
        assert not any("NOT ENCRYPTED" in line for line in server.logs)
