"""A local Ray started by distgen listens on loopback only, with no wrapper around it.

The main test builds the situation in which Ray used to expose the machine (issue #8): a private
network namespace whose loopback device also carries a non-loopback address (10.9.8.7) with
the default route through it, so that "the machine's outward address" exists. There it runs
``distgen generate`` with the Ray executor and reads the namespace's socket tables
(``/proc/net/tcp``, ``tcp6``, ``udp``, ``udp6``) every 50 ms while Ray runs, plus Ray's node
table. Before the fix the same run had sockets listening on ``*`` and on 10.9.8.7.

The namespace needs unprivileged user namespaces (``unshare -rn``). Where the kernel refuses
them the test fails and says so: a skip would hide that the property is unchecked.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from distgen.distributed import cluster

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "configs" / "demo.yaml"
FAKE_LAN_IP = "10.9.8.7"

# Sockets of the namespace, read from /proc/net/*: [(kind, local ip, local port, remote ip)].
SOCKETS_CODE = r'''
import ipaddress

def _ip(hex_addr):
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # IPv6: four 32-bit words, each in host (little-endian) order
    return str(ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))

def parse_proc_net(kind, text):
    """(kind, local ip, local port, remote ip, state) of every socket in a /proc/net table."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 4:
            continue
        lip, lport = f[1].split(":")
        rip, _ = f[2].split(":")
        out.append((kind, _ip(lip), int(lport, 16), _ip(rip), f[3]))
    return out

def read_sockets():
    rows = []
    for kind in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{kind}") as fh:
                rows += parse_proc_net(kind, fh.read())
        except OSError:
            pass
    return rows
'''

CHILD_CODE = SOCKETS_CODE + r'''
import json, sys, threading, time
from distgen import cli

out_dir, config = sys.argv[1], sys.argv[2]
seen = set()
stop = threading.Event()

def poll():
    while not stop.is_set():
        seen.update(read_sockets())
        time.sleep(0.05)

thread = threading.Thread(target=poll, daemon=True)
thread.start()
rc = cli.main(["generate", config, "duration_s=1800", "facility.racks_per_row=2",
               "facility.servers_per_rack=2", "--executor", "ray", "--out", out_dir])
import ray
nodes = [n["NodeManagerAddress"] for n in ray.nodes()] if ray.is_initialized() else []
seen.update(read_sockets())
stop.set()
thread.join()
print("RESULT " + json.dumps({"rc": rc, "nodes": nodes, "sockets": sorted(seen)}))
'''

NAMESPACE_SETUP = (f"ip link set lo up && ip addr add {FAKE_LAN_IP}/24 dev lo && "
                   f"ip route add default via {FAKE_LAN_IP} dev lo && "
                   'exec "$0" "$@"')

_ns: dict = {}
exec(SOCKETS_CODE, _ns)
parse_proc_net = _ns["parse_proc_net"]


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def test_proc_net_parser_decodes_addresses():
    """Lines in the kernel's format (proc(5)): little-endian hex words."""
    tcp = ("  sl  local_address rem_address   st\n"
           "   0: 0100007F:1F90 00000000:0000 0A\n"
           "   1: 00000000:0050 00000000:0000 0A\n"
           "   2: 07080910:01BB 08080808:0035 01\n")
    assert [r[1:4] for r in parse_proc_net("tcp", tcp)] == [
        ("127.0.0.1", 8080, "0.0.0.0"), ("0.0.0.0", 80, "0.0.0.0"),
        ("16.9.8.7", 443, "8.8.8.8")]
    zero = "00000000000000000000000000000000:0000"
    tcp6 = ("  sl  local_address                         remote_address\n"
            f"   0: 00000000000000000000000001000000:1F90 {zero} 0A\n"
            f"   1: 0000000000000000FFFF00000100007F:0016 {zero} 0A\n")
    assert [ipaddress.ip_address(r[1]) for r in parse_proc_net("tcp6", tcp6)] == [
        ipaddress.ip_address("::1"), ipaddress.ip_address("::ffff:127.0.0.1")]
    assert [is_loopback(r[1]) for r in parse_proc_net("tcp6", tcp6)] == [True, True]
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback(FAKE_LAN_IP)


def test_local_ray_env_is_loopback_quiet_and_private():
    env = cluster.local_ray_env({})
    assert env[cluster.SINGLE_MACHINE_ENV] == "0"
    assert env[cluster.USAGE_STATS_ENV] == "0"
    assert env["https_proxy"] == env["HTTP_PROXY"] == "http://127.0.0.1:9"
    assert "127.0.0.1" in env["no_proxy"].split(",")


def test_local_ray_env_keeps_usage_stats_the_user_turned_on():
    env = cluster.local_ray_env({cluster.USAGE_STATS_ENV: "1"})
    assert cluster.USAGE_STATS_ENV not in env
    assert env[cluster.SINGLE_MACHINE_ENV] == "0"  # not a user choice: always loopback


def _namespace_available() -> str | None:
    """None when ``unshare -rn`` and ``ip`` work here, else why not."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "the commands unshare (util-linux) and ip (iproute2) are needed"
    probe = subprocess.run(["unshare", "-rn", "bash", "-c", NAMESPACE_SETUP, "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare -rn failed: {probe.stderr.strip() or probe.returncode}"
    return None


def test_local_ray_listens_on_loopback_only_with_an_outward_address_present(tmp_path):
    why = _namespace_available()
    if why is not None:
        pytest.fail("cannot build a private network namespace to check where Ray listens "
                    f"({why}); enable unprivileged user namespaces "
                    "(sysctl kernel.unprivileged_userns_clone=1 or "
                    "kernel.apparmor_restrict_unprivileged_userns=0)")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        ["unshare", "-rn", "bash", "-c", NAMESPACE_SETUP, sys.executable, "-c", CHILD_CODE,
         str(tmp_path / "out"), str(DEMO)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["rc"] == 0
    assert result["nodes"] == ["127.0.0.1"]
    sockets = [tuple(s) for s in result["sockets"]]
    listening = [s for s in sockets if (s[0].startswith("tcp") and s[4] == "0A")
                 or s[0].startswith("udp")]
    # Ray ran: GCS, raylet (two ports), the driver's and the worker's core-worker servers
    assert len({(s[1], s[2]) for s in listening}) >= 4, sockets
    exposed = [s for s in listening if not is_loopback(s[1])]
    assert exposed == [], f"sockets bound beyond loopback: {exposed}"
    talked_out = [s for s in sockets if s[3] not in ("0.0.0.0", "::") and not is_loopback(s[3])]
    assert talked_out == [], f"connections to non-loopback addresses: {talked_out}"
    # the noise of Ray's address probe and its log lines stays out of the terminal
    assert "8.8.8.8" not in proc.stderr and "(raylet)" not in proc.stdout, proc.stderr[-2000:]
