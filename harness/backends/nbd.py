"""A minimal NBD client: read (and write) a QEMU block export over a unix socket.

The QEMU backend reads the guest-visible data of a node through an NBD export
(``block-export-add`` with ``type: nbd``, served by QEMU's ``nbd/server.c``)
and, on qemu-storage-daemon, writes the guest's data the same way. Only what
that needs is spoken: the fixed newstyle handshake with ``NBD_OPT_GO`` and
simple replies (no structured replies are asked for), then ``NBD_CMD_READ``,
``NBD_CMD_WRITE``, ``NBD_CMD_FLUSH`` and ``NBD_CMD_DISC``. The protocol is
the one documented in the NBD project's ``doc/proto.md``.

Example::

    with NbdClient.connect(socket_path, "blockfuzz-r1") as nbd:
        data = nbd.read(0, nbd.size)
"""
from __future__ import annotations

import socket
import struct

from harness.errors import QemuError

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_READ_ONLY = 1 << 1          # transmission flag

OPT_GO = 7
REP_ACK = 1
REP_INFO = 3
INFO_EXPORT = 0
REP_FLAG_ERROR = 1 << 31

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3

#: QEMU's server refuses requests larger than 32 MiB; stay well below.
MAX_REQUEST = 1 << 20


class NbdError(QemuError):
    """The NBD server refused the handshake or a request."""


class NbdClient:
    """One connection to one export; use :meth:`connect`."""

    def __init__(self, sock: socket.socket, export: str):
        self.sock = sock
        self.export = export
        self.size = 0
        self.read_only = True
        self._handle = 0

    @classmethod
    def connect(cls, path: str, export: str, timeout: float = 10.0) -> "NbdClient":
        """Connect to ``export`` on the unix socket ``path`` and negotiate it."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            client = cls(sock, export)
            client._handshake()
        except BaseException:
            sock.close()
            raise
        return client

    def __enter__(self) -> "NbdClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handshake -----------------------------------------------------------

    def _handshake(self) -> None:
        magic, opt_magic, flags = struct.unpack(">8sQH", self._recv(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT or not flags & FLAG_FIXED_NEWSTYLE:
            raise NbdError(f"NBD export '{self.export}': not a fixed newstyle NBD server")
        self.sock.sendall(struct.pack(">I", FLAG_FIXED_NEWSTYLE | (flags & FLAG_NO_ZEROES)))
        name = self.export.encode()
        payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, OPT_GO, len(payload)) + payload)
        self._read_go_replies()

    def _read_go_replies(self) -> None:
        while True:
            magic, _option, reply, length = struct.unpack(">QIII", self._recv(20))
            data = self._recv(length) if length else b""
            if magic != REPLY_MAGIC:
                raise NbdError(f"NBD export '{self.export}': bad option reply magic {magic:#x}")
            if reply & REP_FLAG_ERROR:
                text = data.decode(errors="replace") or f"error {reply & ~REP_FLAG_ERROR}"
                raise NbdError(f"NBD export '{self.export}' refused: {text}")
            if reply == REP_INFO and len(data) >= 12 and struct.unpack(">H", data[:2])[0] == INFO_EXPORT:
                self.size, tflags = struct.unpack(">QH", data[2:12])
                self.read_only = bool(tflags & FLAG_READ_ONLY)
            elif reply == REP_ACK:
                return

    # -- transmission ----------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset``, in requests of at most 1 MiB."""
        out = bytearray()
        while length > 0:
            n = min(length, MAX_REQUEST)
            self._request(CMD_READ, offset, n)
            out += self._recv(n)
            offset += n
            length -= n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` and flush it."""
        if self.read_only:
            raise NbdError(f"NBD export '{self.export}' is read-only")
        pos = 0
        while pos < len(data):
            chunk = data[pos:pos + MAX_REQUEST]
            self._request(CMD_WRITE, offset + pos, len(chunk), chunk)
            pos += len(chunk)
        self._request(CMD_FLUSH, 0, 0)

    def close(self) -> None:
        """Say goodbye (``NBD_CMD_DISC``) and close the socket."""
        try:
            self._handle += 1
            self.sock.sendall(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, self._handle, 0, 0))
        except OSError:
            pass
        self.sock.close()

    def _request(self, cmd: int, offset: int, length: int, payload: bytes = b"") -> None:
        self._handle += 1
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, self._handle, offset, length)
        self.sock.sendall(header + payload)
        magic, error, handle = struct.unpack(">IIQ", self._recv(16))
        if magic != SIMPLE_REPLY_MAGIC or handle != self._handle:
            raise NbdError(f"NBD export '{self.export}': unexpected reply (magic {magic:#x})")
        if error:
            raise NbdError(f"NBD export '{self.export}': request {cmd} at {offset} failed "
                           f"with error {error}")

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise NbdError(f"NBD export '{self.export}': the server closed the connection")
            buf += chunk
        return bytes(buf)
