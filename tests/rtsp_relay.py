"""A minimal RTSP relay for tests: ffmpeg publishes to it (ANNOUNCE/RECORD, RTP interleaved over
TCP) and readers play from it (DESCRIBE/SETUP/PLAY). ffmpeg has no RTSP server mode of its own.
When the publisher goes away, every reader's connection is closed, as a camera that drops would."""

import re
import socket
import socketserver
import threading


class Relay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.sdp: bytes | None = None
        self.readers: list[socket.socket] = []
        self.lock = threading.Lock()
        self.published = threading.Event()
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.server_address[1]}/live"

    def drop_readers(self) -> None:
        with self.lock:
            readers, self.readers, self.sdp = self.readers, [], None
            self.published.clear()
        for r in readers:
            try:
                r.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(socketserver.StreamRequestHandler):
    def _request(self):
        line = self.rfile.readline()
        if not line:
            return None
        headers = {}
        while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = h.decode().partition(":")
            headers[key.strip().lower()] = value.strip()
        body = self.rfile.read(int(headers.get("content-length", 0)))
        return line.decode().split()[0], headers, body

    def _reply(self, headers, status="200 OK", extra="", body=b""):
        text = f"RTSP/1.0 {status}\r\nCSeq: {headers.get('cseq', '0')}\r\n{extra}"
        if body:
            text += f"Content-Length: {len(body)}\r\n"
        self.wfile.write(text.encode() + b"\r\n" + body)

    def handle(self):
        relay: Relay = self.server
        publishing = False
        while (req := self._request()) is not None:
            method, headers, body = req
            if method == "OPTIONS":
                self._reply(headers, extra="Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, TEARDOWN, GET_PARAMETER\r\n")
            elif method == "ANNOUNCE":
                relay.sdp, publishing = body, True
                self._reply(headers)
            elif method == "DESCRIBE":
                if relay.sdp is None:
                    self._reply(headers, "404 Not Found")
                else:
                    self._reply(headers, extra=f"Content-Type: application/sdp\r\nContent-Base: {relay.url}/\r\n",
                                body=relay.sdp)
            elif method == "SETUP":
                transport = re.sub(r";mode=\w+", "", headers.get("transport", ""))
                self._reply(headers, extra=f"Transport: {transport}\r\nSession: 12345678\r\n")
            elif method in ("RECORD", "PLAY"):
                self._reply(headers, extra="Session: 12345678\r\nRange: npt=0.000-\r\n")
                if method == "RECORD":
                    relay.published.set()
                    return self._forward(relay)
                with relay.lock:
                    relay.readers.append(self.connection)
                return self._drain()
            elif method == "TEARDOWN":
                self._reply(headers)
                return
            else:
                self._reply(headers)
        if publishing:
            relay.drop_readers()

    def _forward(self, relay: Relay):
        """Copy the publisher's interleaved packets to every reader; drop readers when it leaves."""
        try:
            while (head := self.rfile.read(4)) and len(head) == 4 and head[:1] == b"$":
                packet = head + self.rfile.read(int.from_bytes(head[2:4], "big"))
                with relay.lock:
                    readers = list(relay.readers)
                for r in readers:
                    try:
                        r.sendall(packet)
                    except OSError:
                        with relay.lock:
                            if r in relay.readers:
                                relay.readers.remove(r)
        finally:
            relay.drop_readers()

    def _drain(self):
        """Readers send RTCP and keep-alives; answer requests, ignore packets."""
        while (first := self.rfile.read(1)):
            if first == b"$":
                head = self.rfile.read(3)
                self.rfile.read(int.from_bytes(head[1:3], "big"))
                continue
            line = first + self.rfile.readline()
            headers = {}
            while (h := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = h.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            self._reply(headers)
            if line.startswith(b"TEARDOWN"):
                return
