"""Programs that do not use this library meet impl sockets through the kernel.

``listen()`` binds a real kernel socket, so curl and a C program connect to
an impl listener and come out of ``accept()`` as kernel sockets; an impl
client connecting to a C server gets a plain kernel connection.  Skips name
the missing program (curl, a C compiler) and happen only then.
"""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

import impl

TIMEOUT = 30.0

C_CLIENT = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argv[1]));
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    const char *msg = "hello from C";
    if (write(s, msg, strlen(msg)) != (ssize_t)strlen(msg)) { perror("write"); return 1; }
    shutdown(s, SHUT_WR);
    char buf[256]; ssize_t n, got = 0;
    while ((n = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    printf("%s", buf);
    return 0;
}
"""

C_SERVER = r"""
#include <arpa/inet.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    socklen_t len = sizeof a;
    a.sin_family = AF_INET;
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0) return 1;
    getsockname(l, (struct sockaddr *)&a, &len);
    printf("%d\n", ntohs(a.sin_port));
    fflush(stdout);
    int c = accept(l, NULL, NULL);
    char buf[256]; ssize_t n;
    while ((n = read(c, buf, sizeof buf)) > 0)      /* echo until EOF */
        if (write(c, buf, n) != n) return 1;
    close(c);
    return 0;
}
"""


def _compile(tmp_path, source: str, name: str) -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc or gcc) on PATH")
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    exe = tmp_path / name
    subprocess.run([cc, "-O1", "-o", str(exe), str(src)], check=True, timeout=TIMEOUT)
    return str(exe)


def _serve_one(srv, handler, out: dict) -> threading.Thread:
    """Accept one connection on *srv* in a thread and run *handler* on it."""
    def run() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            out["transport"] = conn.transport
            handler(conn)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_curl_gets_a_page_from_an_impl_listener(monitor):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    body = b"served by impl.socket\n"

    def http(conn) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            assert chunk, "curl closed before its request ended"
            request += chunk
        assert request.startswith(b"GET /hello HTTP/1.1\r\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                     % len(body) + body)

    with impl.create_server(("127.0.0.1", 0)) as srv:
        assert srv.transport == "listener"
        srv.settimeout(TIMEOUT)
        out: dict = {}
        t = _serve_one(srv, http, out)
        port = srv.getsockname()[1]
        got = subprocess.run([curl, "-s", "--max-time", "20", f"http://127.0.0.1:{port}/hello"],
                             capture_output=True, timeout=TIMEOUT)
        t.join(TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert got.stdout == body
    assert out["transport"] == "kernel"   # curl does not speak to the monitor


def test_a_c_client_talks_to_an_impl_listener(monitor, tmp_path):
    exe = _compile(tmp_path, C_CLIENT, "client")

    def reply(conn) -> None:
        data = b""
        while True:
            chunk = conn.recv(256)
            if not chunk:
                break
            data += chunk
        conn.sendall(b"impl got: " + data)

    with impl.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(TIMEOUT)
        out: dict = {}
        t = _serve_one(srv, reply, out)
        got = subprocess.run([exe, str(srv.getsockname()[1])], capture_output=True,
                             timeout=TIMEOUT)
        t.join(TIMEOUT)
    assert got.returncode == 0, got.stderr
    assert got.stdout == b"impl got: hello from C"
    assert out["transport"] == "kernel"


def test_an_impl_client_reaches_a_c_server_through_the_kernel(monitor, tmp_path):
    exe = _compile(tmp_path, C_SERVER, "server")
    server = subprocess.Popen([exe], stdout=subprocess.PIPE)
    try:
        port = int(server.stdout.readline())
        with impl.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as c:
            assert c.transport == "kernel"   # no socksdirect listener owns the port
            c.sendall(b"ping over the kernel")
            c.shutdown(impl.SHUT_WR)
            echoed = b""
            while chunk := c.recv(256):
                echoed += chunk
        assert echoed == b"ping over the kernel"
        assert server.wait(TIMEOUT) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
