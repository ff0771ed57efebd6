"""``strata certs init`` and the TLS settings: what the certificates say (names, SANs,
usages, validity), who signed them, key permissions, keeping or replacing the CA, and
the clear errors of a partial or broken TLS configuration."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strata import cli
from strata.common import certs, tls
from strata.common.errors import ConfigError
from strata.common.settings import MasterSettings, RegionalSettings, UpSettings, WorkerSettings

STEMS = ["master", "region-us-east", "region-eu-west", "worker", "client"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str], list[str]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (san.get_values_for_type(x509.UniformResourceIdentifier),
            san.get_values_for_type(x509.DNSName),
            [str(ip) for ip in san.get_values_for_type(x509.IPAddress)])


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def made(tmp_path: Path) -> Path:
    certs.init(tmp_path / "certs", regions=["us-east", "eu-west"])
    return tmp_path / "certs"


def test_init_writes_a_ca_and_a_certificate_and_key_for_every_role(made: Path) -> None:
    expected = {"ca.pem", "ca-key.pem", *(f"{s}.pem" for s in STEMS),
                *(f"{s}-key.pem" for s in STEMS)}
    assert {p.name for p in made.iterdir()} == expected
    for path in made.iterdir():
        mode = path.stat().st_mode & 0o777
        assert mode == (0o600 if path.name.endswith("-key.pem") else 0o644), path.name


def test_each_certificate_names_its_role_and_is_signed_by_the_ca(made: Path) -> None:
    ca = _cert(made / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    wanted = {
        "master": ("master", "strata:master", ["master", "localhost"], True),
        "region-us-east": ("us-east", "strata:region:us-east",
                           ["us-east", "region-us-east", "localhost"], True),
        "region-eu-west": ("eu-west", "strata:region:eu-west",
                           ["eu-west", "region-eu-west", "localhost"], True),
        "worker": ("worker", "strata:worker", [], False),
        "client": ("client", "strata:client", [], False),
    }
    now = datetime.datetime.now(datetime.UTC)
    for stem, (cn, uri, dns, serves) in wanted.items():
        cert = _cert(made / f"{stem}.pem")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
        uris, names, ips = _sans(cert)
        assert (uris, names) == ([uri], dns), stem
        assert ips == (["127.0.0.1"] if serves else []), stem
        assert (ExtendedKeyUsageOID.SERVER_AUTH in _usages(cert)) is serves, stem
        assert ExtendedKeyUsageOID.CLIENT_AUTH in _usages(cert), stem
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert cert.not_valid_before_utc <= now <= cert.not_valid_after_utc
        days = (cert.not_valid_after_utc - now).days
        assert certs.LEAF_DAYS - 1 <= days <= certs.LEAF_DAYS, stem
        key = tls.read(tls.Files(made / "ca.pem", made / f"{stem}.pem",
                                 made / f"{stem}-key.pem"))
        assert key.identity == tls.Identity(*uri.removeprefix("strata:").split(":"))


def test_rerunning_keeps_the_ca_and_issues_new_leaves(made: Path) -> None:
    ca_before = (made / "ca.pem").read_bytes(), (made / "ca-key.pem").read_bytes()
    before = {s: (_cert(made / f"{s}.pem").serial_number, (made / f"{s}-key.pem").read_bytes())
              for s in STEMS}
    written = certs.init(made, regions=["us-east", "eu-west"])
    assert not written.ca_created
    assert ((made / "ca.pem").read_bytes(), (made / "ca-key.pem").read_bytes()) == ca_before
    ca = _cert(made / "ca.pem")
    for stem, (serial, key) in before.items():
        cert = _cert(made / f"{stem}.pem")
        cert.verify_directly_issued_by(ca)  # the old CA still trusts the new leaf
        assert cert.serial_number != serial and (made / f"{stem}-key.pem").read_bytes() != key


def test_force_makes_a_new_ca(made: Path) -> None:
    old = _cert(made / "ca.pem")
    assert certs.init(made, force=True).ca_created
    new = _cert(made / "ca.pem")
    assert new.serial_number != old.serial_number
    _cert(made / "master.pem").verify_directly_issued_by(new)
    with pytest.raises(InvalidSignature):
        _cert(made / "master.pem").verify_directly_issued_by(old)


def test_the_cli_keeps_an_existing_ca_unless_forced(
    made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serial = _cert(made / "ca.pem").serial_number
    with pytest.raises(SystemExit) as exit_:
        cli.main(["certs", "init", str(made), "--regions", "us-east"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"kept the CA in {made}" in out and "region-us-east.pem" in out
    assert _cert(made / "ca.pem").serial_number == serial
    with pytest.raises(SystemExit) as exit_:
        cli.main(["certs", "init", str(made), "--force", "--days", "30"])
    assert exit_.value.code == 0
    assert "made a new CA" in capsys.readouterr().out
    assert _cert(made / "ca.pem").serial_number != serial
    master = _cert(made / "master.pem")
    assert (master.not_valid_after_utc - master.not_valid_before_utc).days == 30


def test_only_missing_issues_a_new_region_and_leaves_the_rest(made: Path) -> None:
    master = (made / "master.pem").read_bytes()
    written = certs.init(made, regions=["us-east", "eu-west", "ap-south"], only_missing=True)
    assert {p.name for p in written.files} == {"region-ap-south.pem", "region-ap-south-key.pem"}
    assert (made / "master.pem").read_bytes() == master


def test_extra_hosts_go_on_the_serving_certificates(tmp_path: Path) -> None:
    certs.init(tmp_path, regions=["a"], hosts=["scheduler.example.com", "10.0.0.7"])
    for stem in ("master", "region-a"):
        _, names, ips = _sans(_cert(tmp_path / f"{stem}.pem"))
        assert "scheduler.example.com" in names and "10.0.0.7" in ips
        assert ipaddress.ip_address("10.0.0.7")
    assert _sans(_cert(tmp_path / "worker.pem"))[1:] == ([], [])


@pytest.mark.parametrize(("regions", "message"), [
    (["a", "region-a"], "would both answer to the name 'region-a'"),
    (["master"], "would both answer to the name 'master'"),
    (["A", "a"], "would both answer to the name 'a'"),
    (["no/slash"], "not a region name"),
])
def test_names_that_would_be_ambiguous_are_refused(
    tmp_path: Path, regions: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        certs.init(tmp_path, regions=regions)
    assert not (tmp_path / "ca.pem").exists()


def test_half_a_ca_is_refused(made: Path) -> None:
    (made / "ca-key.pem").unlink()
    with pytest.raises(ConfigError, match=r"has ca\.pem but not ca-key\.pem"):
        certs.init(made)


def test_a_key_is_never_readable_by_others_while_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes: list[int] = []
    real = os.write

    def spy(fd: int, data: bytes) -> int:
        modes.append(os.fstat(fd).st_mode & 0o777)
        return real(fd, data)

    monkeypatch.setattr(os, "write", spy)
    os.umask(0)
    try:
        certs.init(tmp_path)
    finally:
        os.umask(0o022)
    assert 0o600 in modes and all(m in (0o600, 0o644) for m in modes)


# ---- the settings ---------------------------------------------------------------------


def test_every_process_has_the_tls_settings_and_flags(
    made: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRATA_TLS_CA", str(made / "ca.pem"))
    monkeypatch.setenv("STRATA_TLS_CERT", str(made / "master.pem"))
    monkeypatch.setenv("STRATA_TLS_KEY", str(made / "master-key.pem"))
    for kind in (MasterSettings, RegionalSettings, WorkerSettings, UpSettings):
        settings = kind(_env_file=None)  # type: ignore[call-arg]
        assert settings.tls_cert == made / "master.pem"
        if kind is not UpSettings:
            loaded = tls.from_settings(settings)
            assert loaded is not None and loaded.material.identity == tls.Identity("master")
    help_text = cli._parser().format_help()
    assert "certs" in help_text
    for command in ("master", "regional", "worker"):
        args = cli._parser().parse_args([command, "--tls-ca", "a", "--tls-cert", "b",
                                         "--tls-key", "c"])
        assert (args.tls_ca, args.tls_cert, args.tls_key) == ("a", "b", "c")


def test_tls_needs_all_three_files_or_none(tmp_path: Path) -> None:
    assert tls.from_settings(WorkerSettings(_env_file=None)) is None  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"all three .* STRATA_TLS_KEY \(--tls-key\) "
                                          r"missing"):
        tls.from_settings(WorkerSettings(tls_ca=tmp_path, tls_cert=tmp_path))


def test_a_missing_or_broken_file_is_a_clear_error(made: Path, tmp_path: Path) -> None:
    good = tls.Files(made / "ca.pem", made / "worker.pem", made / "worker-key.pem")
    tls.read(good)
    (tmp_path / "junk.pem").write_text("not a certificate")
    cases = {
        "cannot read the TLS certificate": tls.Files(good.ca, tmp_path / "nope.pem",
                                                     good.key),
        "is not a PEM certificate \\(the CA\\)": tls.Files(tmp_path / "junk.pem", good.cert,
                                                           good.key),
        "junk.pem is not an unencrypted PEM private key": tls.Files(
            good.ca, good.cert, tmp_path / "junk.pem"),
        "is not the key of the certificate": tls.Files(good.ca, good.cert,
                                                       made / "master-key.pem"),
    }
    for message, files in cases.items():
        with pytest.raises(ConfigError, match=message):
            tls.read(files)


def test_a_process_with_part_of_a_tls_configuration_exits_2_saying_what_is_missing(
    capsys: pytest.CaptureFixture[str], made: Path,
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["worker", "--tls-ca", str(made / "ca.pem")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "TLS needs all three" in err and "STRATA_TLS_CERT (--tls-cert)" in err
