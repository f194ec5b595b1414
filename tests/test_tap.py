"""
Tests for the ``twist txsmtp`` plugin and :mod:`txsmtpclient.tap`: discovery,
``--help``, option parsing, the config file, and passwords kept off the
command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import without_reader
from twisted.application.service import IServiceMaker, MultiService
from twisted.plugin import getPlugins
from twisted.python import usage

from txsmtpclient import tap
from txsmtpclient.spool.service import SpoolService

REPO = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _twist(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "twisted", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def _default_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Options open the spool: let the default one be a fresh temporary folder."""
    monkeypatch.setenv("TXSMTP_SPOOL", str(tmp_path / "default-spool"))


def parse(*argv: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(argv))  # type: ignore[no-untyped-call]
    return options


def test_plugin_is_discovered() -> None:
    """getPlugins(IServiceMaker) finds a maker named txsmtp pointing at txsmtpclient.tap."""
    import twisted.plugins

    makers = {m.tapname: m for m in getPlugins(IServiceMaker, twisted.plugins)}
    assert "txsmtp" in makers
    maker = makers["txsmtp"]
    assert maker.options is tap.Options
    assert maker.makeService is tap.makeService


def test_twist_help_lists_the_plugin() -> None:
    """``twist --help`` names txsmtp among the plugins."""
    result = _twist("--help")
    assert result.returncode == 0, result.stderr
    assert "txsmtp" in result.stdout


def test_twist_txsmtp_help_documents_every_option() -> None:
    """``twist txsmtp --help`` lists every option of :class:`tap.Options`."""
    result = _twist("txsmtp", "--help")
    assert result.returncode == 0, result.stderr
    names = [p[0] for p in tap.Options.optParameters] + [f[0] for f in tap.Options.optFlags]
    for name in names:
        assert f"--{name}" in result.stdout, name
    assert "--auth-password-file" in result.stdout


def test_defaults(tmp_path: Path) -> None:
    """With no options the documented defaults apply."""
    options = parse("--spool", str(tmp_path / "x"))
    s = options.settings
    assert s["relay"] == "localhost:25"
    assert s["tls"] == "opportunistic"
    assert s["concurrency"] == 10
    assert s["policy"].initial == 60.0 and s["policy"].maximum == 3600.0
    assert s["policy"].lifetime == 5 * 86400.0
    assert s["poll_interval"] == 1.0
    assert s["grace"] == 30.0
    assert s["status_port"] is None
    assert s["notify_sender"] is False
    assert s["fsync"] is True
    assert s["on_ambiguous"] == "resend"


def test_default_spool_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without --spool the CLI's default applies ($TXSMTP_SPOOL first)."""
    monkeypatch.setenv("TXSMTP_SPOOL", str(tmp_path / "env-spool"))
    assert parse().settings["spool"] == str(tmp_path / "env-spool")


def test_every_option_parsed(tmp_path: Path) -> None:
    """Each option reaches the typed settings."""
    spool = str(tmp_path / "srv-spool")
    s = parse(
        "--relay",
        "tcp:mail.example.test:587",
        "--tls",
        "required",
        "--spool",
        spool,
        "--concurrency",
        "3",
        "--retry-schedule",
        "30s,2h,3",
        "--max-lifetime",
        "2d",
        "--poll-interval",
        "0.25",
        "--status-port",
        "tcp:0:interface=127.0.0.1",
        "--grace",
        "1m",
        "--notify-sender",
        "--no-fsync",
        "--on-ambiguous",
        "hold",
    ).settings
    assert s["relay"] == "tcp:mail.example.test:587"
    assert s["tls"] == "required"
    assert s["spool"] == spool
    assert s["concurrency"] == 3
    policy = s["policy"]
    assert (policy.initial, policy.maximum, policy.factor) == (30.0, 7200.0, 3.0)
    assert policy.lifetime == 2 * 86400.0
    assert s["poll_interval"] == 0.25
    assert s["status_port"] == "tcp:0:interface=127.0.0.1"
    assert s["grace"] == 60.0
    assert s["notify_sender"] is True
    assert s["fsync"] is False
    assert s["on_ambiguous"] == "hold"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tls", "sometimes"], "--tls"),
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "many"], "--concurrency"),
        (["--retry-schedule", "1m"], "--retry-schedule"),
        (["--retry-schedule", "1h,1m"], "--retry-schedule"),
        (["--max-lifetime", "forever"], "--max-lifetime"),
        (["--poll-interval", "0"], "--poll-interval"),
        (["--auth-user", "u"], "--auth-user"),
        (["--auth-password-env", "X"], "--auth-user"),
        (["--on-ambiguous", "drop"], "--on-ambiguous"),
    ],
)
def test_bad_values_are_usage_errors(argv: list[str], message: str) -> None:
    """A bad value is refused with a message naming the option."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*argv)


def test_password_on_the_command_line_is_refused() -> None:
    """--auth-password is refused: ps would show it."""
    with pytest.raises(usage.UsageError, match="visible"):
        parse("--auth-user", "u", "--auth-password", "secret")


def test_password_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The password comes from the file's first line or the named variable."""
    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    s = parse("--auth-user", "u", "--auth-password-file", str(secret)).settings
    assert tap.read_password(s, {}) == "s3cret"
    monkeypatch.setenv("TXSMTP_PW", "checked-at-start")
    s = parse("--auth-user", "u", "--auth-password-env", "TXSMTP_PW").settings
    assert tap.read_password(s, {"TXSMTP_PW": "from-env"}) == "from-env"
    with pytest.raises(usage.UsageError, match="not set"):
        tap.read_password(s, {})


@pytest.mark.parametrize("kind", ["toml", "json", "ini"])
def test_config_file_and_command_line_wins(tmp_path: Path, kind: str) -> None:
    """Options come from a config file; the command line overrides them."""
    values = {"relay": "cfg.example.test:2525", "concurrency": 4, "tls": "never"}
    path = tmp_path / f"txsmtp.{kind}"
    if kind == "toml":
        path.write_text(
            '[txsmtp]\nrelay = "cfg.example.test:2525"\nconcurrency = 4\ntls = "never"\n'
            "notify_sender = true\n"
        )
    elif kind == "json":
        path.write_text(json.dumps({**values, "notify-sender": True}))
    else:
        path.write_text(
            "[txsmtp]\nrelay = cfg.example.test:2525\nconcurrency = 4\ntls = never\n"
            "notify-sender = yes\n"
        )
    s = parse("--config", str(path), "--concurrency", "7").settings
    assert s["relay"] == "cfg.example.test:2525"
    assert s["tls"] == "never"
    assert s["concurrency"] == 7
    assert s["notify_sender"] is True


def test_config_file_refuses_password_and_unknown_keys(tmp_path: Path) -> None:
    """A password, or a key that is no option, in the config file is an error."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"auth-password": "x"}))
    with pytest.raises(usage.UsageError, match="visible"):
        parse("--config", str(path))
    path.write_text(json.dumps({"relai": "x"}))
    with pytest.raises(usage.UsageError, match="unknown option"):
        parse("--config", str(path))
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse("--config", str(tmp_path / "missing.toml"))


@pytest.mark.parametrize("relay", ["foo:bar:baz", "localhost:notaport", "[::1", "tcp6:[x]:25"])
def test_malformed_relay_is_a_usage_error(tmp_path: Path, relay: str) -> None:
    """The relay is read by the client's parser while options are read: a usage error."""
    with pytest.raises(usage.UsageError, match="--relay"):
        parse("--spool", str(tmp_path / "s"), "--relay", relay)


@pytest.mark.parametrize(
    ("relay", "said"),
    [
        ("unix:", "no socket path"),
        ("unix:path=", "no socket path"),
        ("tcp:localhost", "missing 1 required positional argument: 'port'"),
        ("tls:host:465:bogus=1", "unrecognized keyword arguments present: bogus"),
    ],
)
def test_bad_relay_description_says_what_is_wrong(tmp_path: Path, relay: str, said: str) -> None:
    """
    A description with no socket path is refused (it used to start a daemon
    whose every send failed); Twisted's own function names and tuples stay
    out of the message.
    """
    with pytest.raises(usage.UsageError) as info:
        parse("--spool", str(tmp_path / "s"), "--relay", relay)
    message = str(info.value)
    assert said in message
    assert "__init__" not in message and "_parse" not in message and "(" + "'" not in message


def test_make_service_builds_spool_and_status(tmp_path: Path) -> None:
    """makeService returns a MultiService with the spool service and the status port."""
    options = parse(
        "--spool",
        str(tmp_path / "spool"),
        "--relay",
        "127.0.0.1:2525",
        "--status-port",
        "tcp:0:interface=127.0.0.1",
        "--concurrency",
        "2",
    )
    service = tap.makeService(options)
    assert isinstance(service, MultiService)
    spool_service = service.getServiceNamed("spool")
    assert isinstance(spool_service, SpoolService)
    # Two connections, each carrying messages pipelined one behind another.
    assert spool_service.concurrency == 2 * tap.IN_FLIGHT_PER_CONNECTION
    assert spool_service.relay == "127.0.0.1:2525"
    assert service.getServiceNamed("status") is not None
    assert (tmp_path / "spool" / "queue").is_dir()


def test_make_service_with_private_ca(tmp_path: Path, tls_files: object) -> None:
    """--tls-ca loads the CA file; an unreadable one is a usage error."""
    from servers import TLSFiles

    assert isinstance(tls_files, TLSFiles)
    options = parse(
        "--spool",
        str(tmp_path / "s"),
        "--relay",
        "localhost:2525",
        "--tls",
        "required",
        "--tls-ca",
        str(tls_files.cert_path),
    )
    assert isinstance(tap.makeService(options), MultiService)
    with pytest.raises(tap.StartupError, match="--tls-ca") as raised:
        parse("--spool", str(tmp_path / "s"), "--tls-ca", str(tmp_path / "none.pem"))
    assert raised.value.exit_code == 66


def test_relay_parsed_by_the_client_s_host_parser(tmp_path: Path) -> None:
    """Every form the client connects to is accepted at start-up."""
    for relay in (
        "mail.example.test",
        "mail.example.test:587",
        "[::1]:2525",
        "::1",
        "tcp:mail.example.test:587",
        "tcp:host=mx.example.test:port=25",
        "unix:/run/smtp.sock",
    ):
        assert parse("--relay", relay).settings["relay"] == relay


#: Start-up faults: arguments, the sysexits code, and what the one line says.
STARTUP_FAULTS = [
    (["--relay", "127.0.0.1:99999"], 64, "--relay '127.0.0.1:99999': "),
    (["--relay", "tcp:nohost"], 64, "--relay 'tcp:nohost': "),
    (["--relay", "foo:bar:baz"], 64, "--relay 'foo:bar:baz': "),
    (
        ["--auth-user", "u", "--auth-password-file", "/nonexistent"],
        66,
        "--auth-password-file: cannot read /nonexistent: No such file",
    ),
    (["--tls-ca", "/nonexistent.pem"], 66, "--tls-ca: cannot load /nonexistent.pem: No such"),
    (["--status-port", "bogus:thing"], 64, "--status-port 'bogus:thing': Unknown endpoint type"),
    (["--spool", "{file}"], 73, "--spool {file}: cannot open the spool folder: Not a directory"),
    (["--spool", "{file}/sub"], 73, "--spool {file}/sub: cannot open the spool folder"),
    (["--on-ambiguous", "drop"], 64, "--on-ambiguous must be one of resend, hold"),
    (["--no-such-option"], 64, "option --no-such-option not recognized"),
    (["--config", "/nonexistent.toml"], 66, "--config: cannot read /nonexistent.toml"),
    (["--config", "{file}"], 64, "--config: {file} has no [txsmtp] section"),
    (["--config", "{ini}"], 64, "--config: cannot parse {ini}: While reading from"),
]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    STARTUP_FAULTS,
    ids=[" ".join(argv) for argv, _, _ in STARTUP_FAULTS],
)
def test_twist_txsmtp_refuses_bad_settings_in_one_line(
    tmp_path: Path, argv: list[str], code: int, message: str
) -> None:
    """
    ``twist txsmtp`` with a setting that cannot work exits with a sysexits
    code and one line naming the option, before the reactor runs; no
    traceback, no usage dump.
    """
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    # configparser's message for a section given twice runs over lines.
    ini = tmp_path / "twice.ini"
    ini.write_text("[txsmtp]\nrelay = a\n[txsmtp]\n")
    args = [a.replace("{file}", str(afile)).replace("{ini}", str(ini)) for a in argv]
    if "--spool" not in args:
        args += ["--spool", str(tmp_path / "spool")]
    result = _twist("txsmtp", *args)
    assert result.returncode == code, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    expected = message.replace("{file}", str(afile)).replace("{ini}", str(ini))
    assert lines[0].startswith("twist txsmtp: error: " + expected)
    assert lines[0].endswith("(see 'twist txsmtp --help')")
    assert "Traceback" not in result.stderr + result.stdout


def test_startup_errors_raise_when_embedded(tmp_path: Path) -> None:
    """Embedded (no twist parent), a bad setting raises rather than exiting."""
    with pytest.raises(tap.StartupError, match="--relay") as raised:
        parse("--relay", "foo:bar:baz")
    assert raised.value.exit_code == 64
    afile = tmp_path / "f"
    afile.write_text("")
    with pytest.raises(tap.StartupError, match="--spool") as raised:
        parse("--spool", str(afile))
    assert raised.value.exit_code == 73


def test_tls_ca_that_is_not_pem_is_one_line(tmp_path: Path) -> None:
    """A --tls-ca file that is not PEM is a usage error naming it, not a traceback."""
    bad = tmp_path / "ca.pem"
    bad.write_bytes(b"not a certificate\n")
    with pytest.raises(usage.UsageError, match="not a PEM certificate"):
        parse("--spool", str(tmp_path / "s"), "--relay", "127.0.0.1:2525", "--tls-ca", str(bad))


def test_control_port_twisted_cannot_read_is_one_line(tmp_path: Path) -> None:
    """A --control-port description Twisted refuses is a usage error before anything starts."""
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    with pytest.raises(usage.UsageError, match="--control-port 'bogus:xx': Unknown endpoint"):
        parse(
            "--spool",
            str(tmp_path / "s"),
            "--relay",
            "127.0.0.1:2525",
            "--control-port",
            "bogus:xx",
            "--control-token-file",
            str(token),
        )


#: Listening faults: arguments ({port} is the held one), the sysexits code,
#: and what the one line says.
LISTEN_FAULTS = [
    (
        ["--control-port", "{port}"],
        69,
        "--control-port 'tcp:{port}:interface=127.0.0.1': port {port} on 127.0.0.1 is "
        "already in use: stop what listens there (another txsmtp?) or give another port",
    ),
    (
        ["--status-port", "tcp:{port}:interface=127.0.0.1"],
        69,
        "--status-port 'tcp:{port}:interface=127.0.0.1': port {port} on 127.0.0.1 is "
        "already in use",
    ),
    (
        ["--control-port", "unix:{tmp}/missing/control.sock"],
        73,
        "--control-port 'unix:{tmp}/missing/control.sock:mode=600': the folder "
        "{tmp}/missing does not exist: create it or give another path",
    ),
    (
        ["--status-port", "tcp:0:interface=192.0.2.1"],
        78,
        "--status-port 'tcp:0:interface=192.0.2.1': 192.0.2.1 is not an address of this machine",
    ),
]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    LISTEN_FAULTS,
    ids=["control port in use", "status port in use", "socket folder missing", "no such address"],
)
def test_twist_txsmtp_that_cannot_listen_says_so_in_one_line(
    tmp_path: Path, held_port: int, argv: list[str], code: int, message: str
) -> None:
    """
    ``twist txsmtp`` whose control or status port cannot be listened on (in
    use, a socket in a missing folder, an address the machine lacks) exits
    with a sysexits code and one line saying what is wrong and what to do,
    not Twisted's traceback from ``startService``.
    """

    def fill(text: str) -> str:
        return text.replace("{port}", str(held_port)).replace("{tmp}", str(tmp_path))

    result = _twist(
        "txsmtp", "--spool", str(tmp_path / "spool"), "--relay", "127.0.0.1:2525",
        *map(fill, argv),
    )  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("twist txsmtp: error: " + fill(message)), lines[0]
    assert result.returncode == code, result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 53)),
        ("127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("::1", ("::1", 53)),
        ("[::1]", ("::1", 53)),
        ("[2001:db8::1]:5353", ("2001:db8::1", 5353)),
    ],
)
def test_parse_address_reads_ip_and_port(text: str, expected: tuple[str, int]) -> None:
    """A DNS server's address is read by the client's one host parser."""
    from txsmtpclient._endpoints import parse_address

    assert parse_address(text, 53) == expected


@pytest.mark.parametrize(
    "text",
    [
        "dns.example.test",
        "dns.example.test:53",
        "127.0.0.1:",
        "127.0.0.1:+53",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "[127.0.0.1]:53",
        "tcp:127.0.0.1:53",
        "1.2.3.4:5:6",
    ],
)
def test_direct_address_options_refuse_what_the_host_parser_refuses(text: str) -> None:
    """
    --dns-server and --dane-resolver refuse host names, descriptions and
    every port spelling the relay parser refuses (an empty or signed port,
    a bracketed IPv4 address), each as one line naming the option.
    """
    for option in ("--dns-server", "--dane-resolver"):
        with pytest.raises(usage.UsageError, match=f"^{option}: expected IP") as caught:
            parse("--direct", option, text)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1m", "expected INITIAL,MAXIMUM[,FACTOR] such as 1m,1h,2"),
        ("1m,1h,2,3", "expected INITIAL,MAXIMUM[,FACTOR] such as 1m,1h,2"),
        ("1m,1h,fast", "bad factor 'fast'"),
        ("1m,soon", "expected a duration such as '90s'"),
    ],
)
def test_backoff_options_read_one_way(text: str, reason: str) -> None:
    """--retry-schedule and --destination-backoff refuse the same text the same way."""
    for option, extra in (("--retry-schedule", ()), ("--destination-backoff", ("--direct",))):
        with pytest.raises(usage.UsageError) as caught:
            parse(*extra, option, text)
        assert str(caught.value).startswith(f"{option}: {reason}"), str(caught.value)


@pytest.mark.parametrize("option", ["--concurrency", "--destination-concurrency", "--mx-port"])
def test_whole_number_options_read_one_way(option: str) -> None:
    """Whole-number options refuse text and numbers out of range, naming the option."""
    with pytest.raises(usage.UsageError, match=f"^{option} must be a whole number, got 'x'$"):
        parse("--direct", option, "x")
    with pytest.raises(usage.UsageError, match=f"^{option} must be .*1.*, got 0$"):
        parse("--direct", option, "0")


def test_twist_txsmtp_socket_another_process_holds_is_one_line(tmp_path: Path) -> None:
    """
    A Unix control socket whose lock a live process holds (Twisted's
    ``PATH.lock``, here naming this test's process) is one line and 69, and
    the other process's lock is left alone.
    """
    socket_path = tmp_path / "control.sock"
    lock = tmp_path / "control.sock.lock"
    os.symlink(str(os.getpid()), lock)
    result = _twist(
        "txsmtp", "--spool", str(tmp_path / "spool"), "--relay", "127.0.0.1:2525",
        "--control-port", f"unix:{socket_path}",
    )  # fmt: skip
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [
        f"twist txsmtp: error: --control-port 'unix:{socket_path}:mode=600': another "
        f"process is listening on the socket {socket_path} (it holds {lock}): stop it or "
        "give another path (see 'twist txsmtp --help')"
    ]
    assert result.returncode == 69
    assert os.readlink(lock) == str(os.getpid())


def test_twist_txsmtp_help_into_a_closed_pipe_stops_quietly() -> None:
    """``twist txsmtp --help | head -1``: the reader is gone; no traceback, exit 0."""
    command = [sys.executable, "-m", "twisted", "txsmtp", "--help"]
    assert without_reader(command, _env(), REPO) == (0, b"")
