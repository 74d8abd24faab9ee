"""Flower's deployment runtime on one machine: a SuperLink and N SuperNodes as separate processes.

The deployment tests use it, and so can a user who wants to try the runtime before
spreading it over machines::

    python -m fl_backdoor.deployment certificates certs/      # a CA and a server certificate for TLS
    python -m fl_backdoor.deployment local --nodes 3 --tls certs/ --auth

The second command starts the processes, prints the ``flwr run`` command that
reaches them, and stops them on Ctrl-C.  On separate machines the same flags
apply (README: "Flower's deployment runtime").
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import toml_value
from .errors import UserError

READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Certificates:
    """PEM files for TLS: the CA that clients trust, and the SuperLink's certificate and key."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
                      days: int = 365) -> Certificates:
    """Write a self-signed CA and a server certificate it signs for ``hosts`` (IPs or DNS names).

    Uses ``cryptography``, which Flower itself depends on, rather than shelling out to openssl.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def pem(obj: Any) -> bytes:
        return bytes(obj.public_bytes(serialization.Encoding.PEM))

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("fl-backdoor CA")).issuer_name(name("fl-backdoor CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    server = (x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
              .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=days))
              .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = Certificates(directory / "ca.crt", directory / "server.pem", directory / "server.key")
    paths.ca.write_bytes(pem(ca))
    paths.cert.write_bytes(pem(server))
    paths.key.write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.TraditionalOpenSSL,
                                                   serialization.NoEncryption()))
    paths.key.chmod(0o600)
    return paths


def make_node_key(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair for SuperNode authentication, in the OpenSSH format Flower reads: (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = directory / name, directory / f"{name}.pub"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH))
    return private, public


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = READY_TIMEOUT) -> None:
    """Return once something accepts connections on ``port``; fail with the process's log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
            raise UserError(f"{Path(str(process.args[0])).name} exited with code {process.returncode}: "  # type: ignore[index]
                            f"{lines[-1] if lines else '(no output)'} (log: {log})")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise UserError(f"nothing listened on port {port} within {timeout:.0f}s (log: {log})")


def flower_tool(name: str) -> str:
    """A Flower command-line tool of this Python environment."""
    return str(Path(sys.executable).parent / name)


def run_config_argument(values: Mapping[str, Any]) -> str:
    """``flwr run --run-config`` text for a mapping of run-config keys."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


@dataclass
class LocalFederation:
    """A SuperLink and ``nodes`` SuperNodes on localhost, each its own process (group).

    Node i gets ``partition-id=i num-partitions=nodes``, so node i plays client i.
    ``home`` is the FLWR_HOME of every process and of ``flwr run``: the connection
    ``local`` is written to its ``config.toml``, nothing in the user's ~/.flwr changes.
    With ``authenticate`` (needs ``tls``), the SuperLink admits only SuperNodes whose
    public key was registered with ``flwr supernode register``; each node gets a key pair.
    """

    workdir: Path
    nodes: int = 3
    tls: Certificates | None = None
    authenticate: bool = False
    link_port: int = 0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def env(self) -> dict[str, str]:
        # the apps run in this environment: no per-run dependency installation
        return {**os.environ, "FLWR_HOME": str(self.home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}

    def _security(self, server: bool) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        if server:
            return ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                    "--ssl-keyfile", str(self.tls.key)]
        return ["--root-certificates", str(self.tls.ca)]

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                                       cwd=self.workdir, start_new_session=True)
        self.processes[name] = process
        return process

    def start(self) -> LocalFederation:
        """Start the SuperLink, then the SuperNodes; return once all of them listen (or stop them all and raise)."""
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> LocalFederation:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.link_port = self.link_port or free_port()
        security = (f'root-certificates = "{self.tls.ca}"' if self.tls else "insecure = true")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.link_port}"\n'
            f"{security}\n")
        if self.authenticate and self.tls is None:
            raise UserError("SuperNode authentication needs TLS")
        link = self._spawn("superlink", [flower_tool("flower-superlink"), *self._security(True),
                                         "--port", str(self.link_port), "--disable-runtime-dependency-installation",
                                         *(["--enable-supernode-auth"] if self.authenticate else [])])
        wait_for_port(self.link_port, link, self.workdir / "superlink.log")
        for i in range(self.nodes):
            self.add_node(f"supernode-{i}", f"partition-id={i} num-partitions={self.nodes}")
        return self

    def add_node(self, name: str, node_config: str, register: bool = True) -> subprocess.Popen[bytes]:
        """Start one SuperNode; with authentication, its key is registered first unless ``register`` is False
        (then the SuperLink refuses it, and it may exit at once: it is not waited for)."""
        auth: list[str] = []
        if self.authenticate:
            private, public = make_node_key(self.workdir / "keys", name)
            if register:
                subprocess.run([flower_tool("flwr"), "supernode", "register", str(public), "local"], env=self.env,
                               cwd=self.workdir, check=True, capture_output=True, timeout=READY_TIMEOUT)
            auth = ["--auth-supernode-private-key", str(private)]
        port = free_port()
        node = self._spawn(name, [flower_tool("flower-supernode"), *self._security(False), *auth,
                                  "--superlink", f"127.0.0.1:{self.link_port}", "--port", str(port),
                                  "--node-config", node_config])
        if register or not self.authenticate:
            wait_for_port(port, node, self.workdir / f"{name}.log")
        return node

    def submit(self, app: Path, run_config: Mapping[str, Any]) -> subprocess.Popen[str]:
        """Start ``flwr run <app> local --stream`` with these run-config keys; stdout and stderr in one pipe."""
        args = [flower_tool("flwr"), "run", str(app), "local", "--stream", "--run-config",
                run_config_argument(run_config)]
        return subprocess.Popen(args, env=self.env, cwd=app, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def kill(self, name: str) -> None:
        """SIGKILL one process and its children (a crash, not a shutdown)."""
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """Stop every process: SIGTERM, then SIGKILL what is left after 10 s."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> LocalFederation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    """`certificates DIR`, `node-key DIR NAME` or `local --nodes N [--tls DIR] [--auth] [--workdir DIR]`."""
    parser = argparse.ArgumentParser(prog="python -m fl_backdoor.deployment", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    certs = commands.add_parser("certificates", help="write ca.crt, server.pem and server.key")
    certs.add_argument("directory", type=Path)
    certs.add_argument("--host", action="append", help="IP or DNS name the SuperLink is reached at (repeatable; "
                                                       "default 127.0.0.1 and localhost)")
    keys = commands.add_parser("node-key", help="write NAME and NAME.pub, a SuperNode's key pair for authentication")
    keys.add_argument("directory", type=Path)
    keys.add_argument("name")
    local = commands.add_parser("local", help="start a SuperLink and N SuperNodes here until Ctrl-C")
    local.add_argument("--nodes", type=int, default=3)
    local.add_argument("--tls", type=Path, help="directory written by `certificates` (default: insecure)")
    local.add_argument("--auth", action="store_true", help="SuperNode authentication (needs --tls): keys are "
                                                            "generated and registered for the N nodes")
    local.add_argument("--workdir", type=Path, default=Path("deployment"), help="logs and FLWR_HOME")
    args = parser.parse_args(argv)
    if args.command == "certificates":
        paths = make_certificates(args.directory, tuple(args.host or ("127.0.0.1", "localhost")))
        print(f"wrote {paths.ca}, {paths.cert}, {paths.key}")
        return
    if args.command == "node-key":
        private, public = make_node_key(args.directory, args.name)
        print(f"wrote {private} (for --auth-supernode-private-key) and {public} (for `flwr supernode register`)")
        return
    if args.nodes < 1:
        raise UserError("--nodes must be at least 1")
    tls = None
    if args.tls is not None:
        folder = args.tls.resolve()  # the processes run in the workdir
        tls = Certificates(folder / "ca.crt", folder / "server.pem", folder / "server.key")
        missing = [str(p) for p in (tls.ca, tls.cert, tls.key) if not p.is_file()]
        if missing:
            raise UserError(f"--tls {args.tls}: missing {', '.join(missing)} (write them with `certificates`)")
    if args.auth and tls is None:
        raise UserError("--auth needs --tls")
    federation = LocalFederation(args.workdir.resolve(), args.nodes, tls, authenticate=args.auth)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` stops the processes too, not only Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background
    with federation:
        print(f"SuperLink on 127.0.0.1:{federation.link_port} with {args.nodes} SuperNodes "
              f"({'TLS' if tls else 'insecure'}{', authenticated' if args.auth else ''}); "
              f"logs in {federation.workdir}\n"
              f"run the app with:\n  FLWR_HOME={federation.home} flwr run . local --stream "
              f"--run-config \"num-clients={args.nodes}\"\nCtrl-C stops them.", flush=True)
        try:
            while all(p.poll() is None for p in federation.processes.values()):
                time.sleep(1)
            print("a process exited; see its log in the workdir", file=sys.stderr)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main)
