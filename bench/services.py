"""
The two sending daemons the daemon and latency scenarios compare, both relaying to
the same ``smtp-sink``:

* :class:`PrivatePostfix`: a private Postfix instance (own ``main.cf``/``master.cf``,
  queue and data folders in a temporary directory, listening on a free loopback
  port), configured as a relay to the sink.  It is never the system service and
  never port 25.  It needs root (Postfix's master starts as root and drops to the
  ``postfix`` user); :func:`postfix_unavailable` says why it cannot run.
* :class:`TxsmtpDaemon`: ``twist txsmtp`` on a spool folder, relaying to the sink.

CPU is counted the same way for both: user plus system time of every process of
the daemon (for Postfix, the master and all its children, read from ``/proc``; the
children that exited are in the master's ``cutime``/``cstime`` once it reaped them).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from sink import free_port

ROOT = Path(__file__).resolve().parent.parent

#: Clock ticks per second, the unit of /proc/PID/stat's CPU times.
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """
    :returns: ``(parent pid, CPU seconds)`` of a live process, its CPU being its own
        user and system time plus that of the children it has reaped; ``None`` if it
        is gone.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: split after the last ")".
    fields = text[text.rindex(b")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / _TICKS


def tree_cpu_seconds(root: int) -> float:
    """
    :returns: the CPU seconds of process ``root`` and all its live descendants, with
        what their reaped children used.
    """
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = _stat(int(name))
            if found is not None:
                stats[int(name)] = found
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo += children.get(pid, [])
    return total


def postfix_unavailable() -> str | None:
    """
    :returns: why a private Postfix cannot run here, or ``None`` if it can.
    """
    if shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"):
        return "Postfix is not installed (apt-get install postfix; .ci/run does this)"
    if os.geteuid() != 0:
        return "a private Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "the 'postfix' system user does not exist"
    return None


_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n  -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
{qmgr}qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {base}
maillog_file = {base}/maillog

myhostname = relay.bench.localhost
mydomain = bench.localhost
myorigin = $myhostname
mydestination =
append_dot_mydomain = no
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
alias_maps =
alias_database =
local_recipient_maps =
notify_classes =
biff = no

# Everything goes to the sink; an IP literal needs no DNS.
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
relay_transport = smtp
smtp_tls_security_level = none
smtpd_tls_security_level = none
# No arrival-rate throttling: while the enqueue phase runs without a queue manager,
# nothing would hand smtpd its flow-control tokens back.
in_flow_delay = 0
"""


class PrivatePostfix:
    """
    A private Postfix relaying everything to ``127.0.0.1:sink_port``.

    :param base: an empty folder that the ``postfix`` user can reach (every folder
        above it traversable: ``/tmp/x`` is fine).
    :param sink_port: where it relays to.
    :ivar port: the loopback port its smtpd listens on (after :meth:`start`).
    """

    def __init__(self, base: Path, sink_port: int) -> None:
        self.base = base
        self.sink_port = sink_port
        self.port = 0
        self.conf = base / "conf"
        self.queue = base / "queue"
        self.data = base / "data"
        self._master_pid: int | None = None

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["postfix", "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
            env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin"),
        )

    def _write_config(self, *, queue_manager: bool) -> None:
        user = pwd.getpwnam("postfix")
        for folder in (self.conf, self.queue, self.data):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        os.chown(self.data, user.pw_uid, user.pw_gid)
        (self.conf / "master.cf").write_text(
            _MASTER_CF.format(port=self.port, qmgr="" if queue_manager else "#")
        )
        (self.conf / "main.cf").write_text(
            _MAIN_CF.format(
                conf=self.conf,
                queue=self.queue,
                data=self.data,
                base=self.base,
                sink_port=self.sink_port,
            )
        )

    def start(self, *, queue_manager: bool = True) -> None:
        """
        Write the configuration and start the master; it listens when this returns
        (``master -w`` waits for that).

        :param queue_manager: ``False`` to accept mail into the ``incoming`` queue
            without delivering it (no ``qmgr``): the enqueue phase of the daemon
            scenario.  A later ``start()`` delivers what is queued.
        :raises RuntimeError: if Postfix will not start, with its log.
        """
        if not self.port:
            self.port = free_port()
        self._write_config(queue_manager=queue_manager)
        check = self._postfix("check")
        if check.returncode != 0:
            raise RuntimeError(f"postfix check failed: {check.stderr}{self.log_tail()}")
        daemon_directory = subprocess.run(
            ["postconf", "-c", str(self.conf), "-h", "daemon_directory"],
            capture_output=True,
            text=True,
            check=True,
            env=dict(os.environ, PATH=os.environ.get("PATH", "") + ":/usr/sbin"),
        ).stdout.strip()
        started = subprocess.run(
            [f"{daemon_directory}/master", "-c", str(self.conf), "-w"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if started.returncode != 0:
            raise RuntimeError(
                f"Postfix did not start: {started.stdout}{started.stderr}{self.log_tail()}"
            )
        self._master_pid = int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        """
        :returns: CPU seconds used so far by the master and every process under it.
        """
        assert self._master_pid is not None, "start() first"
        return tree_cpu_seconds(self._master_pid)

    def queued(self) -> int:
        """
        :returns: how many messages are in its queues (not yet delivered).
        """
        total = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue / name):
                total += len(files)
        return total

    def log_tail(self, lines: int = 20) -> str:
        """
        :returns: the end of its log, for an error message.
        """
        try:
            text = (self.base / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n" + "\n".join(text.splitlines()[-lines:])

    def sendmail_command(self) -> list[str]:
        """
        :returns: Postfix's ``sendmail`` command line that submits to this instance.
        """
        sendmail = shutil.which("sendmail") or "/usr/sbin/sendmail"
        return [sendmail, "-C", str(self.conf), "-i"]

    def stop(self, timeout: float = 30.0) -> None:
        """
        Stop the master (SIGTERM, which it passes on) and wait, polling with a bound,
        until it is gone.

        :raises RuntimeError: if it is still running after ``timeout`` seconds.
        """
        pid, self._master_pid = self._master_pid, None
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while os.path.exists(f"/proc/{pid}") and _stat(pid) is not None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix master {pid} still running after {timeout} s")
            time.sleep(0.02)

    def __enter__(self) -> PrivatePostfix:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class TxsmtpDaemon:
    """
    ``twist txsmtp`` (this checkout's) on ``spool``, relaying to
    ``127.0.0.1:sink_port`` without TLS, logging JSON to ``log``.

    :param python: the interpreter to run it with.
    :param concurrency: ``--concurrency``.
    :param extra: more ``twist txsmtp`` options.
    """

    def __init__(
        self,
        python: str,
        spool: Path,
        sink_port: int,
        log: Path,
        *,
        concurrency: int,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.command = [
            python,
            "-m",
            "twisted",
            f"--log-file={log}",
            "--log-format=json",
            "txsmtp",
            f"--spool={spool}",
            f"--relay=127.0.0.1:{sink_port}",
            "--tls=never",
            f"--concurrency={concurrency}",
            *extra,
        ]
        self.log = log
        self._process: subprocess.Popen[bytes] | None = None
        self._cpu: float | None = None

    def start(self) -> None:
        """
        Start it; it delivers what is due at once.
        """
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._cpu = None
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env
        )

    def _reap(self) -> bool:
        """
        Reap the process if it has exited, keeping its resource usage.

        :returns: whether it has exited.
        """
        if self._process is None or self._cpu is not None:
            return True
        pid, status, usage = os.wait4(self._process.pid, os.WNOHANG)
        if not pid:
            return False
        self._process.returncode = os.waitstatus_to_exitcode(status)
        self._cpu = usage.ru_utime + usage.ru_stime
        return True

    def running(self) -> bool:
        """
        :returns: whether the process is still alive.
        """
        return not self._reap()

    def stop(self, timeout: float = 60.0) -> float:
        """
        Stop it (SIGTERM: a clean shutdown) and reap it, polling with a bound; after
        ``timeout`` seconds, kill it.

        :returns: the CPU seconds it used, all threads, from the kernel's accounting.
        """
        if self._process is None:
            return 0.0
        if not self._reap():
            self._process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not self._reap():
            if time.monotonic() > deadline:
                self._process.kill()
            time.sleep(0.02)
        self._process = None
        assert self._cpu is not None
        return self._cpu

    def __enter__(self) -> TxsmtpDaemon:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
