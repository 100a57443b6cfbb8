"""`shopmesh k8s`: what the Kubernetes manifests need from the topology."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import click

from services.common.clock import utc_now
from services.users.keys import KeyDirectory, RotationTooSoon
from services.users.tokens import ACCESS_TOKEN_LIFETIME
from shopmesh import options
from shopmesh.k8s.certs import issue_certificates
from shopmesh.k8s.db_secrets import issue_secret_files
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import GENERATED_DIR, render_manifests, stale_files, write_manifests
from shopmesh.k8s.observability import COMPONENT_DIR, KUBERNETES_SAMPLING, render_component
from shopmesh.k8s.postgres import COMPONENT_DIR as POSTGRES_DIR
from shopmesh.k8s.postgres import render_postgres_component
from shopmesh.pki import LEAF_TTL, PkiError
from shopmesh.topology import load_topology


@click.group(name="k8s")
def k8s_group() -> None:
    """What the Kubernetes manifests need from the topology (k8s/README.md)."""


@k8s_group.command(name="render")
@options.topology
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("k8s"),
    help=f"The k8s/ directory: writes {GENERATED_DIR}/, {COMPONENT_DIR}/, {POSTGRES_DIR}/.",
)
@click.option(
    "--sampling",
    type=click.FloatRange(0, 1),
    default=KUBERNETES_SAMPLING,
    show_default=True,
    help="Share of the calls from outside the gateway traces (observability component).",
)
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the files are out of date.")
def k8s_render_command(topology: Path, out: Path, sampling: float, check: bool) -> None:
    """Write the generated manifests, Envoy configs, and the observability and postgres
    components."""
    loaded = load_topology(topology)
    layout = KubernetesLayout(loaded)
    outputs = {
        out / GENERATED_DIR: render_manifests(loaded, layout),
        out / COMPONENT_DIR: render_component(loaded, layout, sampling),
        out / POSTGRES_DIR: render_postgres_component(loaded, layout),
    }
    if check:
        stale = [
            directory / name
            for directory, files in outputs.items()
            for name in stale_files(files, directory)
        ]
        for path in stale:
            click.echo(f"out of date: {path}", err=True)
        if stale:
            click.echo("run `shopmesh k8s render` and commit the result", err=True)
            sys.exit(1)
        click.echo(f"{', '.join(str(d) for d in outputs)}: up to date")
        return
    for directory, files in outputs.items():
        write_manifests(files, directory)
        click.echo(f"wrote {len(files)} files to {directory}")


@k8s_group.command(name="issue-certs")
@options.topology
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="One directory per identity, each the files of its Secret.",
)
@click.option(
    "--pki-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/k8s/pki"),
    help="The CA (created on first use, then reused).",
)
@click.option(
    "--ttl-hours", type=click.FloatRange(min=0.01), default=LEAF_TTL.total_seconds() / 3600
)
def k8s_certs_command(topology: Path, out: Path, pki_dir: Path, ttl_hours: float) -> None:
    """Issue every identity's certificate as the files of a Kubernetes Secret."""
    layout = KubernetesLayout(load_topology(topology))
    ttl = datetime.timedelta(hours=ttl_hours)
    for identity, expiry in issue_certificates(layout, pki_dir, out, ttl).items():
        click.echo(f"{identity}: {out / identity} (valid until {expiry:%Y-%m-%d %H:%M} UTC)")


@k8s_group.command(name="issue-keys")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/k8s/signing-keys"),
    show_default=True,
    help="The key directory: the files of the Secret and, jwks.json, of the ConfigMap.",
)
@click.option("--rotate", is_flag=True, help="Make a new current key (the old one stays).")
@click.option("--force", is_flag=True, help="With --rotate: even if live tokens lose their key.")
def k8s_keys_command(out: Path, rotate: bool, force: bool) -> None:
    """The access-token signing keys: created on first use, then reused (or rotated)."""
    directory = KeyDirectory(out)
    try:
        ring = (
            directory.rotate(utc_now(), ACCESS_TOKEN_LIFETIME, force=force)
            if rotate
            else directory.ensure(utc_now())
        )
    except (RotationTooSoon, FileNotFoundError) as error:
        raise click.ClickException(f"not rotated: {error}") from None
    previous = ring.previous.kid if ring.previous else "none"
    click.echo(f"signing key {ring.current.kid} (previous {previous}) in {out}")
    click.echo(f"Secret: {directory.keys_file} and {directory.jwks_file}; ConfigMap: jwks.json")


@k8s_group.command(name="issue-db-secrets")
@options.topology
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("var/k8s/postgres"),
    show_default=True,
    help="One directory per Secret, named after it, holding its files (0600).",
)
@click.option(
    "--pki-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The databases' CA (created on first use, then reused); default: OUT-pki beside OUT.",
)
def k8s_db_secrets_command(topology: Path, out: Path, pki_dir: Path | None) -> None:
    """The files of the Secrets the postgres component reads (production): made on first use,
    then kept (the databases keep the passwords they started with; a server certificate is
    issued again once it nears its expiry)."""
    layout = KubernetesLayout(load_topology(topology))
    pki_dir = pki_dir or out.with_name(f"{out.name}-pki")
    try:
        directories = issue_secret_files(layout.topology, layout, out, pki_dir)
    except PkiError as error:
        raise click.ClickException(str(error)) from None
    for directory in directories:
        keys = ", ".join(sorted(p.name for p in directory.iterdir()))
        click.echo(f"Secret {directory.name}: {directory} ({keys})")
