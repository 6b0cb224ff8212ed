"""The load of benches/soak.sh (run it through that script): session churn, open SSE streams,
reloads and hostile connections against one proxy, with its RSS and open fds every minute."""

import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time

PORT = int(os.environ["SOAK_PORT"])
PID = int(os.environ["SOAK_PID"])
OUT = os.environ["SOAK_OUT"]
BIN = os.environ["SOAK_BIN_PATH"]
MINUTES = float(os.environ["SOAK_MINUTES"])
CLIENTS = int(os.environ.get("SOAK_CLIENTS", "8"))
STREAMS = int(os.environ.get("SOAK_STREAMS", "20"))
HOSTILE = int(os.environ.get("SOAK_HOSTILE", "30"))
CONFIG = os.path.join(OUT, "switchyard.toml")
HOST = f"localhost:{PORT}"

stop = threading.Event()
lock = threading.Lock()
counts = {"sessions": 0, "calls": 0, "failed": 0, "streams": 0, "reloads": 0,
          "reload_failed": 0, "hostile_closed": 0}


reasons = {}


def count(key, n=1):
    with lock:
        counts[key] += n


def failed(why):
    with lock:
        counts["failed"] += 1
        reasons[why] = reasons.get(why, 0) + 1


def post(conn, body, session=None):
    headers = {"content-type": "application/json", "host": HOST,
               "accept": "application/json, text/event-stream"}
    if session:
        headers["mcp-session-id"] = session
    conn.request("POST", "/mcp", json.dumps(body), headers)
    response = conn.getresponse()
    response.read()
    return response


def open_session(conn):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "soak", "version": "1"}}}
    response = post(conn, init)
    session = response.getheader("mcp-session-id")
    if response.status != 200 or not session:
        raise RuntimeError(f"initialize answered {response.status}")
    post(conn, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)
    return session


def delete(conn, session):
    conn.request("DELETE", "/mcp", headers={"host": HOST, "mcp-session-id": session})
    conn.getresponse().read()


def churn():
    """initialize, notifications/initialized, three tools/call, DELETE; again."""
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            session = open_session(conn)
            count("sessions")
            for i in range(3):
                call = {"jsonrpc": "2.0", "id": 2 + i, "method": "tools/call",
                        "params": {"name": "echo", "arguments": {"message": "soak"}}}
                response = post(conn, call, session)
                if response.status == 200:
                    count("calls")
                else:
                    failed(f"tools/call {response.status}")
            delete(conn, session)
        except Exception as error:
            failed(f"churn: {type(error).__name__}: {error}"[:80])
            time.sleep(0.2)
        finally:
            conn.close()


def stream():
    """A session with its GET stream held open for 20 s, then closed and deleted."""
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
        try:
            session = open_session(conn)
            # The keep-alive connection would idle past header_read_timeout meanwhile: the
            # DELETE goes on a fresh one (http.client reconnects after close).
            conn.close()
            sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
            sock.sendall((f"GET /mcp HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
                          f"Mcp-Session-Id: {session}\r\n\r\n").encode())
            count("streams")
            deadline = time.time() + 20
            sock.settimeout(1)
            while time.time() < deadline and not stop.is_set():
                try:
                    if not sock.recv(4096):
                        break
                except socket.timeout:
                    pass
            sock.close()
            delete(conn, session)
        except Exception as error:
            failed(f"stream: {type(error).__name__}: {error}"[:80])
            time.sleep(0.2)
        finally:
            conn.close()


def hostile(kind):
    """One hostile connection at a time, held until the proxy closes it (or 2 minutes)."""
    while not stop.is_set():
        try:
            sock = socket.create_connection(("127.0.0.1", PORT), timeout=5)
            if kind == "partial":
                sock.sendall(b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
            elif kind == "slow":
                sock.sendall(f"POST /mcp HTTP/1.1\r\nHost: {HOST}\r\n"
                             "Content-Type: application/json\r\nContent-Length: 100000\r\n"
                             "\r\n{".encode())
            sock.settimeout(1)
            deadline = time.time() + 120
            while time.time() < deadline and not stop.is_set():
                try:
                    if kind == "slow":
                        sock.sendall(b" ")
                        time.sleep(15)  # slower than client_body (10 s): it must be cut
                    if not sock.recv(4096):
                        count("hostile_closed")
                        break
                except socket.timeout:
                    pass
                except OSError:
                    count("hostile_closed")
                    break
            sock.close()
        except OSError:
            time.sleep(0.5)


def reloads():
    """Every 15 s flip `active`, alternately through `switchyard reload` and SIGHUP."""
    n = 0
    while not stop.wait(15):
        n += 1
        with open(CONFIG) as f:
            text = f.read()
        if 'active = "blue"' in text:
            text = text.replace('active = "blue"', 'active = "green"')
        else:
            text = text.replace('active = "green"', 'active = "blue"')
        with open(CONFIG, "w") as f:
            f.write(text)
        if n % 2:
            done = subprocess.run([BIN, "reload", "--config", CONFIG],
                                  capture_output=True).returncode == 0
        else:
            os.kill(PID, signal.SIGHUP)
            done = True
        count("reloads" if done else "reload_failed")


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def fds():
    return len(os.listdir(f"/proc/{PID}/fd"))


def main():
    workers = [churn] * CLIENTS + [stream] * STREAMS
    workers += [lambda k=k: hostile(k) for k in ("idle", "partial", "slow") for _ in range(HOSTILE)]
    workers += [reloads]
    threads = [threading.Thread(target=w, daemon=True) for w in workers]
    for t in threads:
        t.start()
    header = (f"{'minute':>6} {'rss_kib':>9} {'fds':>5} {'sessions':>9} {'calls':>8} "
              f"{'failed':>7} {'streams':>8} {'reloads':>8} {'hostile_closed':>15}")
    print(header, flush=True)
    samples = []
    start = time.time()
    for minute in range(1, int(MINUTES) + 1):
        time.sleep(max(0.0, start + minute * 60 - time.time()))
        with lock:
            c = dict(counts)
        sample = (rss_kib(), fds())
        samples.append(sample)
        print(f"{minute:>6} {sample[0]:>9} {sample[1]:>5} {c['sessions']:>9} {c['calls']:>8} "
              f"{c['failed']:>7} {c['streams']:>8} {c['reloads']:>8} {c['hostile_closed']:>15}",
              flush=True)
    stop.set()
    if len(samples) < 2:
        print("soak: too short to compare with the warm-up (run at least 2 minutes)")
        return
    (rss0, fd0), (rss1, fd1) = samples[0], samples[-1]
    # Noise allowance: allocator and socket churn move RSS by a few MiB and fds by the number
    # of connections in flight at the instant of the sample.
    rss_grew = rss1 > rss0 * 1.10 and rss1 - rss0 > 4096
    fds_grew = fd1 > fd0 + 20
    print(f"soak: after warm-up RSS {rss0} -> {rss1} KiB "
          f"({'GREW' if rss_grew else 'no growth'}), open fds {fd0} -> {fd1} "
          f"({'GREW' if fds_grew else 'no growth'}); reload failures {counts['reload_failed']}")
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
        print(f"soak: failed {n} x {why}")


if __name__ == "__main__":
    main()
