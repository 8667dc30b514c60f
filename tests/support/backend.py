#!/usr/bin/env python3
"""A backend in a process of its own, for the tests that kill one with SIGKILL.

    backend.py NAME [IDLE_SECONDS]

Answers every request 200 with NAME as its body and its `x-pool` header; `/slow?ms=N` answers
after N milliseconds; a WebSocket upgrade gets its 101 and then every byte back (an echo).
With IDLE_SECONDS, it closes a keep-alive connection idle that long, as
gunicorn and other app servers do. Prints `listening PORT` once it listens on 127.0.0.1, then
`request METHOD PATH` as each request arrives (its body read), one line each.
"""

import base64
import hashlib
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

NAME = sys.argv[1]
IDLE = float(sys.argv[2]) if len(sys.argv) > 2 else None
OUT = threading.Lock()


def say(line):
    with OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Without it, Nagle and delayed ACK add 40 ms to every answer on a reused connection.
    disable_nagle_algorithm = True
    # The socket timeout: a connection idle this long is closed (None: never).
    timeout = IDLE

    def answer(self):
        if self.headers.get("upgrade", "").lower() == "websocket":
            return self.websocket()
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        say(f"request {self.command} {self.path}")
        url = urlparse(self.path)
        if url.path == "/slow":
            time.sleep(int(parse_qs(url.query).get("ms", ["1000"])[0]) / 1000)
        body = NAME.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-pool", NAME)
        self.end_headers()
        self.wfile.write(body)

    def websocket(self):
        key = self.headers.get("sec-websocket-key", "")
        accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", base64.b64encode(accept).decode())
        self.end_headers()
        say(f"websocket {self.path}")
        self.connection.settimeout(None)
        while True:
            data = self.connection.recv(4096)
            if not data:
                break
            self.connection.sendall(data)
        self.close_connection = True

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
say(f"listening {server.server_address[1]}")
server.serve_forever()
