"""registries.conf v2: prefix matching, location remapping, mirrors, blocking, drop-ins, auth files."""

import base64

import pytest

from storage import registries_conf as registries
from storage.auth import AuthFile, Credentials, decode_auth, parse_www_authenticate
from storage.errors import BlockedRegistry, RegistryConfigError
from storage.reference import parse

CONF = """
unqualified-search-registries = ["example.com", "docker.io"]

[[registry]]
prefix = "registry.k8s.io"
location = "127.0.0.1:5000"
insecure = true

[[registry]]
prefix = "example.com/team"
location = "mirror.internal/example-team"
[[registry.mirror]]
location = "fast.local/team"
insecure = true
[[registry.mirror]]
location = "digests.local/team"
pull-from-mirror = "digest-only"

[[registry]]
location = "blocked.example"
blocked = true

[[registry]]
prefix = "*.corp.example"
[[registry.mirror]]
location = "cache.local"
"""


@pytest.fixture
def conf():
    return registries.merge([(None, registries.parse_text(CONF))])


def sources(conf, text):
    return [(s.host, s.repository, "insecure" if s.insecure else "tls", s.is_mirror) for s in conf.pull_sources(parse(text))]


def test_prefix_is_replaced_by_location_and_the_longest_prefix_wins(conf):
    assert sources(conf, "registry.k8s.io/pause:3.9") == [("127.0.0.1:5000", "pause", "insecure", False)]
    assert sources(conf, "registry.k8s.io/e2e/busybox:1") == [("127.0.0.1:5000", "e2e/busybox", "insecure", False)]
    # example.com/teamx is not under the prefix example.com/team: path boundaries matter
    assert sources(conf, "example.com/teamx/app") == [("example.com", "teamx/app", "tls", False)]


def test_mirrors_come_first_and_respect_pull_from_mirror(conf):
    assert sources(conf, "example.com/team/app:1") == [
        ("fast.local", "team/app", "insecure", True), ("mirror.internal", "example-team/app", "tls", False)]
    digest = "sha256:" + "ab" * 32
    assert [s[0] for s in sources(conf, f"example.com/team/app@{digest}")] == [
        "fast.local", "digests.local", "mirror.internal"]


def test_blocked_registry_refuses_naming_it(conf):
    with pytest.raises(BlockedRegistry, match="blocked.example"):
        conf.pull_sources(parse("blocked.example/app"))


def test_wildcard_prefix_keeps_the_host_and_docker_io_goes_to_registry_1(conf):
    assert sources(conf, "git.corp.example/tools/x") == [("cache.local", "tools/x", "tls", True),
                                                         ("git.corp.example", "tools/x", "tls", False)]
    assert sources(conf, "busybox") == [("registry-1.docker.io", "library/busybox", "tls", False)]


def test_search_registries_and_defaults(conf):
    assert conf.search_domains() == ("example.com", "docker.io")
    assert registries.RegistriesConfig().search_domains() == ("docker.io",)


def test_drop_ins_override_by_prefix_and_replace_the_search_list(tmp_path):
    main = tmp_path / "registries.conf"
    main.write_text(CONF)
    dropins = tmp_path / "registries.conf.d"
    dropins.mkdir()
    (dropins / "10-k8s.conf").write_text('[[registry]]\nprefix = "registry.k8s.io"\nlocation = "other:6000"\n')
    (dropins / "20-search.conf").write_text('unqualified-search-registries = ["quay.io"]\n')
    (dropins / "ignored.txt").write_text("not toml at all [[[")
    conf = registries.load(main)
    assert sources(conf, "registry.k8s.io/pause") == [("other:6000", "pause", "tls", False)]
    assert conf.search_domains() == ("quay.io",)
    assert registries.load(tmp_path / "missing.conf") == registries.RegistriesConfig()


@pytest.mark.parametrize("text, message", [
    ("[[registry]\n", "invalid TOML"),
    ("[[registry]]\ninsecure = true\n", "prefix or a location"),
    ('[registries.search]\nregistries = ["a"]\n', "version 1"),
    ('[[registry]]\nprefix = "*.a.b"\nlocation = "c"\n', "wildcard"),
    ('[[registry]]\nlocation = "a"\n[[registry.mirror]]\nlocation = "b"\npull-from-mirror = "sometimes"\n', "pull-from-mirror"),
])
def test_bad_configuration_names_the_problem(tmp_path, text, message):
    path = tmp_path / "registries.conf"
    path.write_text(text)
    with pytest.raises(RegistryConfigError, match=message):
        registries.load(path)


def test_auth_file_lookup_prefers_the_most_specific_key():
    def b64(s):
        return base64.b64encode(s.encode()).decode()
    auth = AuthFile.from_doc({"auths": {
        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
        "registry.example": {"auth": b64("any:pw1")},
        "registry.example/team": {"auth": b64("team:pw2")},
        "tokens.example": {"identitytoken": "refresh-1"}}})
    assert auth.lookup("docker.io").username == "hub"
    assert auth.lookup("registry.example", "other/app").username == "any"
    assert auth.lookup("registry.example", "team/app") == Credentials("team", "pw2")
    assert auth.lookup("tokens.example").identity_token == "refresh-1"
    assert auth.lookup("nowhere.example") is None
    with pytest.raises(RegistryConfigError):
        AuthFile.from_doc({"auths": {"x": {"auth": "not base64!"}}})
    with pytest.raises(RegistryConfigError):
        decode_auth(base64.b64encode(b"no-colon").decode())
    assert "pw" not in repr(Credentials("u", "pw"))


def test_www_authenticate_parsing():
    scheme, params = parse_www_authenticate(
        'Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.example/token", "service": "registry.example",
                      "scope": "repository:a/b:pull,push"}
    assert parse_www_authenticate('Basic realm="x y"') == ("basic", {"realm": "x y"})
