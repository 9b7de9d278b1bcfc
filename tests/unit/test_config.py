"""Configuration: flags, HARK_* variables and validation messages that name the option."""

from __future__ import annotations

import pytest

from media.cli.main import build_parser, config_from_args
from media.config import Config, ConfigError, IceServer


def parse(argv: list[str]) -> Config:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_defaults_bind_loopback_with_the_documented_ports() -> None:
    config = parse([])
    assert (config.http_host, config.http_port) == ("127.0.0.1", 8080)
    assert (config.grpc_host, config.grpc_port) == ("127.0.0.1", 50051)
    assert (config.ready_timeout, config.media_timeout) == (10.0, 5.0)
    assert (config.session_ttl, config.closed_retention, config.heartbeat_interval) == (60, 60, 5)
    assert config.token is None and config.ice_servers == ()


def test_environment_variables_set_defaults_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARK_HTTP_PORT", "9000")
    monkeypatch.setenv("HARK_MEDIA_TIMEOUT", "2.5")
    monkeypatch.setenv("HARK_ICE_SERVER", "stun:a.example:3478, stun:b.example:3478")
    config = parse(["--http-port", "9001"])
    assert config.http_port == 9001
    assert config.media_timeout == 2.5
    assert [s.url for s in config.ice_servers] == ["stun:a.example:3478", "stun:b.example:3478"]


def test_ice_server_flags_repeat_and_carry_turn_credentials() -> None:
    config = parse(
        ["--ice-server", "stun:stun.example:3478", "--ice-server", "turn:ann:s3cret@t.example:3478"]
    )
    stun, turn = config.ice_servers
    assert stun == IceServer("stun:stun.example:3478")
    assert turn == IceServer("turn:t.example:3478", "ann", "s3cret")
    assert turn.link_header() == (
        '<turn:t.example:3478>; rel="ice-server"; username="ann"; credential="s3cret"; '
        'credential-type="password"'
    )
    assert "s3cret" not in repr(turn)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://x", "expected stun:"),
        ("turn:nopass@h:1", "USER:CREDENTIAL@"),
        ("stun:", "expected"),
    ],
)
def test_bad_ice_servers_name_the_option(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IceServer.parse(text)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("http_port", 70000, "--http-port must be 0..65535"),
        ("media_timeout", 0, "--media-timeout must be > 0"),
        ("log_format", "xml", "--log-format must be text or json"),
        ("token", "short", "--token must be at least 8"),
        ("public_url", "example.com", "--public-url must start with http"),
        ("udp_port", 0, "--udp-port must be 1..65535"),
        ("ice_public_addresses", ("node-1",), "--ice-public-address 'node-1' is not an IP"),
    ],
)
def test_invalid_values_name_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config(**{field: value})  # type: ignore[arg-type]


def test_the_token_never_shows_in_the_config_repr() -> None:
    assert "hunter2hunter2" not in repr(Config(token="hunter2hunter2"))


def test_public_url_defaults_to_the_bound_address() -> None:
    open_config = Config(http_host="0.0.0.0", insecure_no_auth=True)
    assert open_config.base_url(8123) == "http://127.0.0.1:8123"
    assert open_config.base_url(8123, secure=True) == "https://127.0.0.1:8123"
    assert Config(public_url="https://hark.example/").base_url(8123) == "https://hark.example"


def test_binding_beyond_loopback_needs_a_token_or_an_explicit_opt_out() -> None:
    with pytest.raises(ConfigError, match="set --token, or --insecure-no-auth"):
        parse(["--http-host", "0.0.0.0"])
    with pytest.raises(ConfigError, match="binding 10.1.2.3"):
        Config(grpc_host="10.1.2.3")
    assert parse(["--http-host", "0.0.0.0", "--token", "long-enough-token"]).token
    assert parse(["--http-host", "::", "--insecure-no-auth"]).insecure_no_auth


def test_cors_defaults_to_any_origin_only_on_loopback() -> None:
    assert Config().effective_cors_origins == ("*",)
    assert Config(http_host="0.0.0.0", token="long-enough-token").effective_cors_origins == ()
    config = parse(["--cors-origin", "https://app.example", "--cors-origin", "https://b.example"])
    assert config.effective_cors_origins == ("https://app.example", "https://b.example")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-tls-cert", "c.pem"], "--http-tls-cert and --http-tls-key go together"),
        (["--grpc-client-ca", "ca.pem"], "--grpc-client-ca needs --grpc-tls-cert"),
        (["--vad-start-ratio", "2"], "--vad-start-ratio: start_ratio must be between"),
        (["--vad-frame-ms", "25"], "--vad-frame-ms: frame_ms must be 10, 20 or 30"),
        (["--pre-listen-ms", "-1"], "--pre-listen-ms"),
        (["--rate-burst", "0"], "--rate-burst must be >= 1"),
    ],
)
def test_operations_and_audio_options_are_validated(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_every_option_is_a_flag_and_is_in_the_readme() -> None:
    import dataclasses
    import pathlib

    from media.cli.main import LIST_OPTIONS, SERVE_OPTIONS

    flags = {flag for flag, _, _ in SERVE_OPTIONS} | {flag for flag, _ in LIST_OPTIONS}
    flags |= {"insecure-no-auth", "whip-redirect"}
    fields = {f.name.replace("_", "-") for f in dataclasses.fields(Config)}
    plural = {
        "ice-servers": "ice-server",
        "cors-origins": "cors-origin",
        "ice-addresses": "ice-address",
        "ice-public-addresses": "ice-public-address",
    }
    assert {plural.get(f, f) for f in fields} - {"event-retention"} == flags
    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    missing = sorted(flag for flag in flags if f"--{flag}" not in readme)
    assert not missing, f"options missing from README.md: {missing}"


def test_http_edge_options_come_from_flags_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defaults = parse([])
    assert (defaults.http_header_timeout, defaults.http_body_timeout) == (10.0, 10.0)
    assert defaults.max_connections_per_ip == 64
    monkeypatch.setenv("HARK_HTTP_BODY_TIMEOUT", "2.5")
    config = parse(["--http-header-timeout", "3", "--max-connections-per-ip", "0"])
    assert (config.http_header_timeout, config.http_body_timeout) == (3.0, 2.5)
    assert config.max_connections_per_ip == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--http-header-timeout", "0"], "--http-header-timeout must be > 0"),
        (["--http-body-timeout", "-1"], "--http-body-timeout must be > 0"),
        (["--max-connections-per-ip", "-1"], "--max-connections-per-ip must be >= 0"),
    ],
)
def test_http_edge_options_are_validated(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(argv)


def test_udp_port_and_public_addresses_come_from_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse([]).udp_port is None and parse([]).ice_public_addresses == ()
    monkeypatch.setenv("HARK_ICE_PUBLIC_ADDRESS", "203.0.113.7, 2001:db8::7")
    monkeypatch.setenv("HARK_UDP_PORT", "40000")
    config = parse([])
    assert config.udp_port == 40000
    assert config.ice_public_addresses == ("203.0.113.7", "2001:db8::7")
    flags = parse(["--udp-port", "40001", "--ice-public-address", "198.51.100.1"])
    assert (flags.udp_port, flags.ice_public_addresses) == (40001, ("198.51.100.1",))
