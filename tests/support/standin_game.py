#!/usr/bin/env python3
"""A stand-in for `java -jar server.jar nogui` (Minecraft Java 1.21.4), for zlh agent tests.

Python 3.11, stdlib only. Run it with the server directory as cwd.

Files read in cwd:
  server.properties  server-port (25565), server-ip (127.0.0.1; anything that is not a
                     loopback address is replaced by 127.0.0.1), motd, max-players (20),
                     level-name (world)
  standin-players    players online in the status ping (default 0), read at every ping
  eula.txt           must hold `eula=true`, else: error line, exit 1 (a missing eula.txt is
                     created with eula=false, as the real server does)
Files written in cwd:
  <level-name>/level.dat               created if missing (any bytes)
  <level-name>/standin-starts.log      one line per start:   "<iso time> pid=<pid>"
  <level-name>/standin-commands.log    one line per save-off / save-on / save-all [flush]

Behaviour:
  * binds the port at once (a bare TCP accept works early), but answers the Server List
    Ping only after the "world loading" delay, STANDIN_LOAD_MS (default 1500). Before that
    (and after `hang`) connections are accepted and held without any answer, then closed.
  * then: `Done (1.500s)! For help, type "help"`, and SLP works: handshake -> status
    request -> status JSON; ping -> pong. Legacy (0xFE) pings get the 1.6 kick answer;
    garbage closes that connection only. Logins (next state 2/3) get a disconnect.
  * stdin, one command a line (a leading "/" is ignored). As in the real server, commands
    typed while the world is loading run once it is done.
      stop            "Stopping the server" ... "Saving worlds" ..., exit 0 after ~200 ms
      say <msg>       "[Server] <msg>"
      list            "There are N of a max of M players online: a, b" (STANDIN_PLAYERS online)
      whitelist add|remove <name>, op|deop <name>, ban <name> [reason],
      ban-ip <ip> [reason], pardon <name>, pardon-ip <ip>, kick <name> [reason]
                      vanilla replies; the JSON lists (whitelist.json, ops.json,
                      banned-players.json, banned-ips.json) are written as vanilla
                      writes them (offline-mode UUIDs, made by the game)
      save-off/save-on/save-all [flush]   vanilla replies, logged to standin-commands.log
      crash           stack trace on stderr, exit 1 at once
      hang            stops answering pings (readiness goes away), keeps running and
                      keeps reading commands
      anything else   "Unknown or incomplete command, see below for error"
    EOF on stdin does not stop the server.
  * SIGTERM: "Stopping server (SIGTERM)", exit 143. SIGINT: same, exit 130.
Env:
  STANDIN_LOAD_MS          world loading delay in ms (default 1500)
  STANDIN_CRASH_AFTER_MS   crash by itself (exit 1) that many ms after becoming ready
  STANDIN_IGNORE_STOP=1    ignore `stop` on stdin (the agent must escalate to a signal)
  STANDIN_REQUIRE_FILES    comma-separated relative paths that must exist before start,
                           else "FATAL missing <path>", exit 3
  STANDIN_PLAYERS          comma-separated names shown online (status sample and `list`)
  STANDIN_REQUIRE_CONTENT  comma-separated `path=sha256hex`; a mismatch (or a missing file)
                           prints "FATAL content mismatch <path> ..." / "FATAL missing <path>",
                           exit 3
Exit codes: 0 stop, 1 EULA / bind failure / crash, 3 seeding check, 143 SIGTERM, 130 SIGINT.
"""
import datetime
import hashlib
import ipaddress
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import uuid

MC_VERSION = "1.21.4"
MC_PROTOCOL = 769
MAX_PACKET = 1 << 21

_out_lock = threading.RLock()  # re-entrant: the SIGTERM handler may interrupt a write
ready = threading.Event()  # set once the world is "loaded"
hung = threading.Event()  # set by `hang`
_exiting = threading.Event()


# ---------------------------------------------------------------- output

def _write(stream, text: str) -> None:
    with _out_lock:
        try:
            stream.write(text + "\n")
            stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # nobody reads our output any more; keep running like a real server


def log(msg: str, level: str = "INFO", thread: str = "Server thread") -> None:
    _write(sys.stdout, f"[{time.strftime('%H:%M:%S')}] [{thread}/{level}]: {msg}")


def plain(msg: str) -> None:
    _write(sys.stdout, msg)


def die(code: int) -> None:
    """Exits the whole process at once (other threads included)."""
    _exiting.set()
    with _out_lock:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except Exception:  # noqa: BLE001
                pass
    os._exit(code)


# ---------------------------------------------------------------- configuration

def _unescape(value: str) -> str:
    # java.util.Properties escapes: \: \= \\ \n \t \uXXXX
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            n = value[i + 1]
            if n == "u" and i + 6 <= len(value):
                try:
                    out.append(chr(int(value[i + 2:i + 6], 16)))
                    i += 6
                    continue
                except ValueError:
                    pass
            out.append({"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(n, n))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def read_properties(path: str) -> dict:
    props = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if not line or line[0] in "#!":
                    continue
                sep = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
                if sep < 0:
                    props[_unescape(line)] = ""
                else:
                    props[_unescape(line[:sep].strip())] = _unescape(line[sep + 1:].strip())
    except FileNotFoundError:
        log("Failed to load properties from file: server.properties", "WARN", "ServerMain")
    return props


def int_prop(props: dict, key: str, default: int) -> int:
    try:
        return int(props.get(key, "").strip() or default)
    except ValueError:
        return default


def bind_address(props: dict) -> str:
    ip = props.get("server-ip", "").strip()
    if not ip:
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return ip
    except ValueError:
        pass
    log(f"server-ip {ip!r} is not a loopback address; the stand-in binds 127.0.0.1", "WARN")
    return "127.0.0.1"


def check_eula() -> None:
    ok = False
    try:
        with open("eula.txt", encoding="utf-8", errors="replace") as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k.strip() == "eula" and v.strip().lower() == "true":
                    ok = True
    except FileNotFoundError:
        log("Failed to load eula.txt", "WARN", "ServerMain")
        try:
            with open("eula.txt", "w", encoding="utf-8") as f:
                f.write("#By changing the setting below to TRUE you are indicating your agreement "
                        "to our EULA (https://aka.ms/MinecraftEULA).\n"
                        f"#{time.strftime('%a %b %d %H:%M:%S %Z %Y')}\neula=false\n")
        except OSError:
            pass
    if not ok:
        log("You need to agree to the EULA in order to run the server. Go to eula.txt for more info.",
            "ERROR", "ServerMain")
        die(1)


def check_seeding() -> None:
    for rel in filter(None, (p.strip() for p in os.environ.get("STANDIN_REQUIRE_FILES", "").split(","))):
        if not os.path.exists(rel):
            plain(f"FATAL missing {rel}")
            die(3)
    for pair in filter(None, (p.strip() for p in os.environ.get("STANDIN_REQUIRE_CONTENT", "").split(","))):
        rel, sep, want = pair.rpartition("=")
        if not sep or not rel:
            plain(f"FATAL bad STANDIN_REQUIRE_CONTENT entry {pair!r}")
            die(3)
        try:
            with open(rel, "rb") as f:
                got = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            plain(f"FATAL missing {rel}")
            die(3)
        if got != want.strip().lower():
            plain(f"FATAL content mismatch {rel} sha256={got} expected={want.strip().lower()}")
            die(3)


# ---------------------------------------------------------------- protocol

def enc_varint(value: int) -> bytes:
    value &= 0xFFFFFFFF
    out = bytearray()
    while True:
        if value & ~0x7F == 0:
            out.append(value)
            return bytes(out)
        out.append((value & 0x7F) | 0x80)
        value >>= 7


def enc_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return enc_varint(len(b)) + b


def enc_packet(pid: int, body: bytes = b"") -> bytes:
    inner = enc_varint(pid) + body
    return enc_varint(len(inner)) + inner


class Closed(Exception):
    pass


class Conn:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = bytearray()

    def fill(self) -> None:
        chunk = self.sock.recv(4096)
        if not chunk:
            raise Closed()
        self.buf += chunk

    def peek_byte(self) -> int:
        while not self.buf:
            self.fill()
        return self.buf[0]

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_varint(self) -> int:
        value = 0
        for i in range(5):
            b = self.read_exact(1)[0]
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value - (1 << 32) if value & 0x80000000 else value
        raise ValueError("VarInt too long")

    def read_packet(self):
        length = self.read_varint()
        if length <= 0 or length > MAX_PACKET:
            raise ValueError(f"bad packet length {length}")
        body = self.read_exact(length)
        pid, pos = parse_varint(body, 0)
        return pid, body[pos:]


def parse_varint(buf: bytes, pos: int):
    value = 0
    for i in range(5):
        if pos + i >= len(buf):
            raise ValueError("truncated VarInt")
        b = buf[pos + i]
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            v = value - (1 << 32) if value & 0x80000000 else value
            return v, pos + i + 1
    raise ValueError("VarInt too long")


def parse_string(buf: bytes, pos: int, max_len: int = 32767):
    n, pos = parse_varint(buf, pos)
    if n < 0 or n > max_len * 4 or pos + n > len(buf):
        raise ValueError("bad string")
    return buf[pos:pos + n].decode("utf-8", errors="replace"), pos + n


def players_online() -> int:
    """Players "online": the number in ./standin-players (in the server directory, so a
    test can change it while the game runs), else 0."""
    try:
        with open("standin-players", encoding="utf-8") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


class Server:
    def __init__(self, props: dict):
        self.motd = props.get("motd", "A Minecraft Server")
        self.max_players = int_prop(props, "max-players", 20)
        self.host = bind_address(props)
        self.port = int_prop(props, "server-port", 25565)

    def status_json(self) -> str:
        return json.dumps({
            "version": {"name": MC_VERSION, "protocol": MC_PROTOCOL},
            "players": {"max": self.max_players,
                        "online": max(players_online(), len(ONLINE)),
                        "sample": [{"name": n, "id": offline_uuid(n)} for n in ONLINE]},
            "description": {"text": self.motd},
        }, ensure_ascii=False, separators=(",", ":"))

    def answering(self) -> bool:
        return ready.is_set() and not hung.is_set()

    def hold(self, conn: Conn, limit: float = 60.0) -> None:
        """Accepts bytes and answers nothing, until we would answer, the peer closes, or `limit`."""
        conn.sock.settimeout(0.1)
        end = time.monotonic() + limit
        while time.monotonic() < end and not self.answering() and not _exiting.is_set():
            try:
                if not conn.sock.recv(4096):
                    return
            except socket.timeout:
                continue
        # then close without a status response (the client must ask again)

    def handle(self, sock: socket.socket) -> None:
        conn = Conn(sock)
        try:
            if not self.answering():
                self.hold(conn)
                return
            sock.settimeout(10)
            if conn.peek_byte() == 0xFE:
                self.legacy(conn)
                return
            pid, body = conn.read_packet()
            if pid != 0x00:
                return  # not a handshake: drop
            _proto, pos = parse_varint(body, 0)
            _addr, pos = parse_string(body, pos, 255)
            if pos + 2 > len(body):
                raise ValueError("truncated handshake")
            pos += 2  # port
            next_state, pos = parse_varint(body, pos)
            if next_state in (2, 3):
                msg = json.dumps({"text": "This stand-in server does not accept players"})
                sock.sendall(enc_packet(0x00, enc_string(msg)))
                return
            if next_state != 1:
                return
            while True:
                pid, body = conn.read_packet()
                if hung.is_set():
                    self.hold(conn)
                    return
                if pid == 0x00:
                    sock.sendall(enc_packet(0x00, enc_string(self.status_json())))
                elif pid == 0x01 and len(body) == 8:
                    sock.sendall(enc_packet(0x01, body))
                    return
                else:
                    return
        except (Closed, ValueError, OSError, UnicodeError, IndexError, struct.error):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def legacy(self, conn: Conn) -> None:
        # 1.4-1.6 clients: 0xFE [0x01 [0xFA ...]]; answer with the 1.6 style kick packet
        text = "\u00a71\x00127\x00" + MC_VERSION + "\x00" + self.motd + "\x00" + "0\x00" + str(self.max_players)
        data = text.encode("utf-16-be")
        conn.sock.sendall(b"\xff" + struct.pack(">H", len(data) // 2) + data)

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                if _exiting.is_set():
                    return
                time.sleep(0.01)
                continue
            threading.Thread(target=self.handle, args=(sock,), daemon=True).start()


# ---------------------------------------------------------------- players

ONLINE = [n for n in os.environ.get("STANDIN_PLAYERS", "").split(",") if n.strip()]


def offline_uuid(name: str) -> str:
    # What an offline-mode server derives: a v3 UUID of "OfflinePlayer:<name>".
    digest = bytearray(hashlib.md5(("OfflinePlayer:" + name).encode("utf-8")).digest())
    digest[6] = (digest[6] & 0x0F) | 0x30
    digest[8] = (digest[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(digest)))


def load_list(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return []


def save_list(path: str, entries: list) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entries, f, indent=2)
    os.replace(tmp, path)


def ban_time() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime())


def player_command(word: str, rest: str) -> bool:
    """Vanilla's whitelist/op/ban/kick commands. Returns False for other words."""
    args = rest.split()
    sub = ""
    if word == "whitelist":
        if len(args) < 2 or args[0] not in ("add", "remove"):
            return False
        sub, args = args[0], args[1:]
    if word in ("whitelist", "op", "deop", "ban", "ban-ip", "pardon", "pardon-ip", "kick") and not args:
        log("Unknown or incomplete command, see below for error", "ERROR")
        return True
    target, reason = (args[0], " ".join(args[1:])) if args else ("", "")
    key = lambda e: (e.get("name") or "").lower()
    if word == "whitelist":
        entries = load_list("whitelist.json")
        present = any(key(e) == target.lower() for e in entries)
        if sub == "add":
            if present:
                log("Player is already whitelisted")
            else:
                entries.append({"uuid": offline_uuid(target), "name": target})
                save_list("whitelist.json", entries)
                log(f"Added {target} to the whitelist")
        else:
            if not present:
                log("Player is not whitelisted")
            else:
                save_list("whitelist.json", [e for e in entries if key(e) != target.lower()])
                log(f"Removed {target} from the whitelist")
    elif word in ("op", "deop"):
        entries = load_list("ops.json")
        present = any(key(e) == target.lower() for e in entries)
        if word == "op":
            if present:
                log("Nothing changed. The player already is an operator")
            else:
                entries.append({"uuid": offline_uuid(target), "name": target, "level": 4,
                                "bypassesPlayerLimit": False})
                save_list("ops.json", entries)
                log(f"Made {target} a server operator")
        else:
            if not present:
                log("Nothing changed. The player is not an operator")
            else:
                save_list("ops.json", [e for e in entries if key(e) != target.lower()])
                log(f"Made {target} no longer a server operator")
    elif word == "ban":
        entries = load_list("banned-players.json")
        reason = reason or "Banned by an operator."
        if any(key(e) == target.lower() for e in entries):
            log("Nothing changed. The player is already banned")
        else:
            entries.append({"uuid": offline_uuid(target), "name": target, "created": ban_time(),
                            "source": "Server", "expires": "forever", "reason": reason})
            save_list("banned-players.json", entries)
            log(f"Banned {target}: {reason}")
            if target in ONLINE:
                ONLINE.remove(target)
    elif word == "ban-ip":
        entries = load_list("banned-ips.json")
        reason = reason or "Banned by an operator."
        if any(e.get("ip") == target for e in entries):
            log("Nothing changed. That IP is already banned")
        else:
            entries.append({"ip": target, "created": ban_time(), "source": "Server",
                            "expires": "forever", "reason": reason})
            save_list("banned-ips.json", entries)
            log(f"Banned IP {target}: {reason}")
    elif word == "pardon":
        entries = load_list("banned-players.json")
        if not any(key(e) == target.lower() for e in entries):
            log("Nothing changed. The player isn't banned")
        else:
            save_list("banned-players.json", [e for e in entries if key(e) != target.lower()])
            log(f"Unbanned {target}")
    elif word == "pardon-ip":
        entries = load_list("banned-ips.json")
        if not any(e.get("ip") == target for e in entries):
            log("Nothing changed. That IP isn't banned")
        else:
            save_list("banned-ips.json", [e for e in entries if e.get("ip") != target])
            log(f"Unbanned IP {target}")
    elif word == "kick":
        if target in ONLINE:
            ONLINE.remove(target)
            log(f"Kicked {target}: {reason or 'Kicked by an operator'}")
        else:
            log("No player was found", "ERROR")
    else:
        return False
    return True


# ---------------------------------------------------------------- game

def level_dir(props: dict) -> str:
    name = props.get("level-name", "").strip() or "world"
    return name


def append_line(path: str, line: str) -> None:
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError as e:
        log(f"could not write {path}: {e}", "WARN")


def now_iso() -> str:
    return datetime.datetime.now().isoformat(timespec="milliseconds")


def crash(reason: str) -> None:
    log("Encountered an unexpected exception", "ERROR")
    trace = (
        f"java.lang.IllegalStateException: {reason}\n"
        "\tat net.minecraft.server.MinecraftServer.tickServer(MinecraftServer.java:1034)\n"
        "\tat net.minecraft.server.dedicated.DedicatedServer.tickServer(DedicatedServer.java:356)\n"
        "\tat net.minecraft.server.MinecraftServer.runServer(MinecraftServer.java:788)\n"
        "\tat java.base/java.lang.Thread.run(Thread.java:1583)"
    )
    _write(sys.stderr, trace)
    log("This crash report has been saved to: ./crash-reports/crash-standin-server.txt", "ERROR")
    die(1)


class Console:
    def __init__(self, server: Server, world: str):
        self.server = server
        self.world = world
        self.ignore_stop = os.environ.get("STANDIN_IGNORE_STOP", "") not in ("", "0", "false")
        self.stopping = False

    def record(self, command: str) -> None:
        append_line(os.path.join(self.world, "standin-commands.log"), f"{now_iso()} {command}")

    def run(self, line: str) -> None:
        cmd = line.strip()
        if cmd.startswith("/"):
            cmd = cmd[1:]
        if not cmd:
            return
        word, _, rest = cmd.partition(" ")
        if word == "stop":
            if self.ignore_stop or self.stopping:
                return
            self.stopping = True
            log("Stopping the server")
            log("Stopping server")
            log("Saving players")
            log("Saving worlds")
            log(f"Saving chunks for level 'ServerLevel[{self.world}]'/minecraft:overworld")
            time.sleep(0.2)
            log(f"ThreadedAnvilChunkStorage ({self.world}): All chunks are saved")
            die(0)
        elif word == "say":
            log(f"[Server] {rest}")
        elif word == "list":
            log(f"There are {len(ONLINE)} of a max of {self.server.max_players} players online: "
                + ", ".join(ONLINE))
        elif word == "save-off":
            self.record("save-off")
            log("Automatic saving is now disabled")
        elif word == "save-on":
            self.record("save-on")
            log("Automatic saving is now enabled")
        elif word == "save-all":
            self.record(cmd)
            log("Saving the game (this may take a moment!)")
            log("Saved the game")
        elif word == "crash":
            crash("Stand-in crash requested on the console")
        elif word == "hang":
            hung.set()
            log("Can't keep up! Is the server overloaded? Running 60000ms or 1200 ticks behind", "WARN",
                "Server Watchdog")
        elif player_command(word, rest):
            pass
        else:
            log("Unknown or incomplete command, see below for error", "ERROR")
            log(f"{cmd}<--[HERE]", "ERROR")

    def read_stdin(self) -> None:
        try:
            stream = sys.stdin.buffer
        except AttributeError:
            return
        while True:
            try:
                raw = stream.readline()
            except (OSError, ValueError):
                return
            if not raw:
                return  # EOF: a real server keeps running
            line = raw.decode("utf-8", errors="replace")
            ready.wait()  # commands typed during world loading run once it is done
            self.run(line)


def on_signal(signum, _frame) -> None:
    if signum == signal.SIGTERM:
        log("Stopping server (SIGTERM)")
        die(143)
    else:
        log("Stopping server (SIGINT)")
        die(130)


def main() -> None:
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.monotonic()

    check_seeding()
    props = read_properties("server.properties")
    check_eula()

    server = Server(props)
    world = level_dir(props)
    load_ms = int(os.environ.get("STANDIN_LOAD_MS", "1500") or 1500)
    crash_ms = os.environ.get("STANDIN_CRASH_AFTER_MS", "").strip()

    log(f"Starting minecraft server version {MC_VERSION}")
    log("Loading properties")
    log("Default game type: SURVIVAL")
    log("Generating keypair")
    log(f"Starting Minecraft server on {server.host}:{server.port}")
    try:
        listener = socket.create_server((server.host, server.port),
                                        family=socket.AF_INET6 if ":" in server.host else socket.AF_INET,
                                        reuse_port=False, backlog=64)
    except OSError as e:
        log("**** FAILED TO BIND TO PORT!", "WARN")
        log(f"The exception was: {e}", "WARN")
        log("Perhaps a server is already running on that port?", "WARN")
        die(1)
    threading.Thread(target=server.serve, args=(listener,), daemon=True).start()

    console = Console(server, world)
    threading.Thread(target=console.read_stdin, daemon=True).start()

    log(f'Preparing level "{world}"')
    os.makedirs(world, exist_ok=True)
    level_dat = os.path.join(world, "level.dat")
    if not os.path.exists(level_dat):
        with open(level_dat, "wb") as f:
            f.write(b"\x1f\x8b\x08\x00standin-level.dat\x00")
    append_line(os.path.join(world, "standin-starts.log"), f"{now_iso()} pid={os.getpid()}")
    log("Preparing start region for dimension minecraft:overworld")

    # "world loading": sleep in small steps so signals are handled promptly
    end = t0 + load_ms / 1000.0
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.05))
    log(f"Time elapsed: {load_ms} ms")
    ready.set()
    log(f'Done ({time.monotonic() - t0:.3f}s)! For help, type "help"')

    crash_at = None
    if crash_ms:
        crash_at = time.monotonic() + int(crash_ms) / 1000.0
    while True:
        if crash_at is not None and time.monotonic() >= crash_at:
            crash("Stand-in crash after STANDIN_CRASH_AFTER_MS")
        time.sleep(0.05)


if __name__ == "__main__":
    main()
